//! G1 through MCP: hostile commands under a pre-approved policy try to get a
//! value out; nothing the client receives (every JSON-RPC message, progress
//! included) nor anything the server logs holds a value or its encodings.
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use crate::common::*;
use serde_json::json;

/// Plain value.
const TOKEN: &str = "s3cr3t-VALUE_0123456789abcdefXYZ";
/// A value whose URL and JSON forms differ from its raw bytes.
const PASSWD: &str = "pa\"ss\\w0rd/with+plus&amp=ok! 42";

fn percent(v: &str, plus: bool) -> String {
    v.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            b' ' if plus => "+".into(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A value's forms, each also as it appears inside a JSON string.
fn forms(v: &str) -> Vec<(String, Vec<u8>)> {
    use base64::Engine;
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
    let hex: String = v.bytes().map(|b| format!("{b:02x}")).collect();
    let json = serde_json::to_string(v).unwrap();
    let json = json[1..json.len() - 1].to_owned();
    let base = vec![
        ("raw", v.to_owned()),
        ("base64", STANDARD.encode(v)),
        ("base64 unpadded", STANDARD_NO_PAD.encode(v)),
        ("base64url", URL_SAFE.encode(v)),
        ("base64url unpadded", URL_SAFE_NO_PAD.encode(v)),
        ("hex", hex.clone()),
        ("HEX", hex.to_uppercase()),
        ("percent", percent(v, false)),
        ("percent lower", percent(v, false).to_lowercase()),
        ("form", percent(v, true)),
        ("json", json.clone()),
        ("json slash", json.replace('/', "\\/")),
    ];
    let mut out = Vec::new();
    for (name, f) in base {
        let in_json = serde_json::to_string(&f).unwrap();
        out.push((
            format!("{name} (in JSON)"),
            in_json.as_bytes()[1..in_json.len() - 1].to_vec(),
        ));
        out.push((name.to_owned(), f.into_bytes()));
    }
    out
}

fn python() -> String {
    let out = std::process::Command::new("python3")
        .args(["-c", "import sys; print(sys.executable)"])
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

fn hostile(py: &str) -> Vec<Vec<String>> {
    let sh = |s: &str| vec!["sh".to_owned(), "-c".to_owned(), s.to_owned()];
    let pyc = |s: &str| vec![py.to_owned(), "-c".to_owned(), s.to_owned()];
    vec![
        vec!["env".into()],
        vec!["printenv".into(), "TOKEN".into()],
        vec!["printenv".into(), "PASSWD".into()],
        sh("echo $TOKEN; echo \"$PASSWD\""),
        sh("echo \"$TOKEN\" >&2; echo \"$PASSWD\" >&2"),
        sh("printf %s \"$TOKEN\" | base64"),
        sh("printf %s \"$PASSWD\" | base64 -w0"),
        sh("printf %s \"$TOKEN\" | od -An -tx1 | tr -d ' \\n'"),
        sh("printf %s \"$PASSWD\" | xxd -p | tr -d '\\n'"),
        sh("printf %s \"$TOKEN\" | xxd -p -u | tr -d '\\n' >&2"),
        pyc("import os;print(os.environ['TOKEN'].encode().hex())"),
        pyc("import os;print(os.environ['PASSWD'].encode().hex().upper())"),
        pyc("import os,urllib.parse as u;print(u.quote(os.environ['PASSWD'], safe=''))"),
        pyc("import os,urllib.parse as u;print(u.quote_plus(os.environ['PASSWD']))"),
        pyc("import os,urllib.parse as u;print(u.quote(os.environ['PASSWD']))"),
        pyc("import os,json;print(json.dumps(os.environ['PASSWD']))"),
        pyc(
            "import os,json;print(json.dumps({'t': os.environ['TOKEN'], 'p': os.environ['PASSWD']}))",
        ),
        pyc("import os,json;print(json.dumps(os.environ['PASSWD']).replace('/', '\\\\/'))"),
        pyc(
            "import os,base64;print(base64.urlsafe_b64encode(os.environ['PASSWD'].encode()).decode())",
        ),
        pyc(
            "import os,base64;print(base64.b64encode(os.environ['TOKEN'].encode()).decode().rstrip('='))",
        ),
        pyc(
            "import os,base64;print(base64.b64encode(b'x' + os.environ['TOKEN'].encode() + b'yz').decode())",
        ),
        pyc(
            "import os,base64;print(base64.b64encode(b'ab' + os.environ['PASSWD'].encode()).decode())",
        ),
        pyc(
            "import os,sys,time\nfor c in os.environ['TOKEN']:\n sys.stdout.write(c); sys.stdout.flush(); time.sleep(0.005)",
        ),
        pyc(
            "import os,sys\nfor c in os.environ['PASSWD']:\n sys.stderr.write(c); sys.stderr.flush()",
        ),
        sh(
            "printf %s \"${TOKEN%????????????????}\"; sleep 0.2; printf '%s\\n' \"${TOKEN#????????????????}\"",
        ),
        sh("sleep 1; echo \"$TOKEN\""),
        sh("(sleep 0.3; echo \"grandchild $TOKEN\") & wait"),
        sh("sh -c 'sh -c \"echo \\$PASSWD >&2\"'"),
        sh("echo \"$TOKEN$TOKEN$PASSWD$PASSWD\""),
        sh("tr '\\0' '\\n' < /proc/self/environ"),
        sh("set"),
        sh("export -p"),
        pyc("import os;print(repr(os.environ['TOKEN']))"),
        sh("echo \"$TOKEN\" > leak.txt; cat leak.txt; rm -f leak.txt"),
        sh("printf '   %s   \\n' \"$PASSWD\""),
        pyc("print('A' * 300000 + __import__('os').environ['TOKEN'])"),
        pyc("import os,urllib.parse as u;print(u.quote(os.environ['PASSWD'], safe=\"~()*!.'\"))"),
        sh("printf '%s' \"$TOKEN\" | rev | rev"),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn g1_hostile_commands_leak_nothing_through_mcp() {
    let e = Env::unlocked();
    e.env_create("leak");
    e.set("leak", "TOKEN", TOKEN);
    e.set("leak", "PASSWD", PASSWD);
    let py = python();
    let commands = hostile(&py);
    assert!(commands.len() >= 30);
    let mut policy = String::new();
    for argv in &commands {
        policy.push_str(&format!(
            "[[clients.{CLIENT}.preapproved]]\nargv = {}\nenvironments = [\"leak\"]\nexpires = \"2099-01-01T00:00:00Z\"\n\n",
            serde_json::to_string(argv).unwrap()
        ));
    }
    e.policy(&policy);
    let cwd = e.work().to_string_lossy().into_owned();

    for era in [Era::Initialize, Era::Discover] {
        let a = Agent::start(&e, era, "50s").await;
        let mut masked_runs = 0;
        for argv in &commands {
            let r = a
                .call_with_progress(
                    "run",
                    json!({"environments": ["leak"], "command": argv, "cwd": cwd, "timeout_seconds": 30}),
                )
                .await;
            let v = structured(&r);
            assert_eq!(v["status"], "finished", "{argv:?}: {v}");
            if v["masked_count"].as_u64().unwrap() > 0 {
                masked_runs += 1;
            }
        }
        // Every command prints a value in some form; the engine caught each.
        assert_eq!(masked_runs, commands.len(), "{era:?}");
        let received = a.all_received();
        let logged = a.all_stderr();
        assert!(contains(&received, b"[masked:TOKEN]"));
        assert!(contains(&received, b"[masked:PASSWD]"));
        for value in [TOKEN, PASSWD] {
            for (form, bytes) in forms(value) {
                assert!(
                    !contains(&received, &bytes),
                    "{era:?}: the client received the {form} form of a value"
                );
                assert!(
                    !contains(&logged, &bytes),
                    "{era:?}: the server logged the {form} form of a value"
                );
            }
        }
        a.stop().await;
    }
}
