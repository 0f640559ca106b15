//! Bound variables: where one may go (a destination, the methods and
//! paths allowed there, and the header its value goes in), and the
//! placeholder a child holds instead of its value. The broker's per-lease
//! proxy enforces them; the vault keeps them in the variable's sealed
//! label, so only a holder of the vault key can make or widen one.

use serde::{Deserialize, Serialize};

/// One destination a variable is bound to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rule {
    /// `https` or `http`.
    pub scheme: String,
    /// Lower-case host name (or address).
    pub host: String,
    /// Port (the scheme's default when the binding gave none).
    pub port: u16,
    /// Upper-case methods allowed; empty: any.
    pub methods: Vec<String>,
    /// Path patterns (`/v1/*`: a prefix; anything else: exact); empty: any.
    pub paths: Vec<String>,
    /// The header the value goes in.
    pub header: String,
    /// The header's value, `{value}` standing for the value.
    pub template: String,
    /// Where the value goes (the header, unless configured otherwise).
    #[serde(default)]
    pub place: Place,
}

/// Where a bound variable's value goes in an allowed request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Place {
    /// The binding's header, set to its template (only when the request
    /// carries the placeholder in a header).
    #[default]
    Header,
    /// In place of the placeholder in the query string (percent-encoded).
    Query,
    /// In place of the placeholder in the body.
    Body,
}

impl Place {
    /// `header`, `query` or `body`.
    pub fn parse(text: &str) -> Result<Place, RuleError> {
        match text.trim().to_ascii_lowercase().as_str() {
            "header" => Ok(Place::Header),
            "query" => Ok(Place::Query),
            "body" => Ok(Place::Body),
            _ => Err(RuleError::Place(text.to_owned())),
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Place::Header => "header",
            Place::Query => "query",
            Place::Body => "body",
        }
    }
}

/// Why a binding does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuleError {
    /// The destination is not `https://host[:port]` or `http://…`.
    #[error("'{0}' is not a destination: give https://HOST[:PORT]")]
    Destination(String),
    /// The header is not `Name: template` with `{{value}}` in it.
    #[error("'{0}' is not a header template: give 'Name: … {{value}} …'")]
    Header(String),
    /// A method is not a token.
    #[error("'{0}' is not an HTTP method")]
    Method(String),
    /// A path does not start with `/`.
    #[error("'{0}' is not a path: it must start with /")]
    Path(String),
    /// Not `header`, `query` or `body`.
    #[error("'{0}' is not a place for the value: give header, query or body")]
    Place(String),
}

impl Rule {
    /// Parses a binding as `custody set --bind` gives it: the destination,
    /// an optional header template (default `Authorization: Bearer
    /// {value}`), methods (`GET,POST`) and path patterns.
    pub fn parse(
        destination: &str,
        header: Option<&str>,
        methods: &[String],
        paths: &[String],
    ) -> Result<Rule, RuleError> {
        let bad = || RuleError::Destination(destination.to_owned());
        let (scheme, rest) = destination.split_once("://").ok_or_else(bad)?;
        let scheme = scheme.to_ascii_lowercase();
        let default_port = match scheme.as_str() {
            "https" => 443,
            "http" => 80,
            _ => return Err(bad()),
        };
        let authority = rest.strip_suffix('/').unwrap_or(rest);
        if authority.is_empty() || authority.contains(['/', '?', '#', '@', ' ']) {
            return Err(bad());
        }
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => {
                (h, p.parse::<u16>().map_err(|_| bad())?)
            }
            _ => (authority, default_port),
        };
        if host.is_empty() || port == 0 {
            return Err(bad());
        }
        let (name, template) = header
            .unwrap_or("Authorization: Bearer {value}")
            .split_once(':')
            .ok_or_else(|| RuleError::Header(header.unwrap_or_default().to_owned()))?;
        let (name, template) = (name.trim(), template.trim());
        let token = |s: &str| {
            !s.is_empty()
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
        };
        if !token(name) || !template.contains("{value}") || template.chars().any(char::is_control) {
            return Err(RuleError::Header(header.unwrap_or_default().to_owned()));
        }
        let mut m = Vec::new();
        for method in methods.iter().flat_map(|x| x.split(',')) {
            let method = method.trim().to_ascii_uppercase();
            if !token(&method) {
                return Err(RuleError::Method(method));
            }
            m.push(method);
        }
        let mut p = Vec::new();
        for path in paths.iter().flat_map(|x| x.split(',')) {
            let path = path.trim();
            if !path.starts_with('/') {
                return Err(RuleError::Path(path.to_owned()));
            }
            p.push(path.to_owned());
        }
        Ok(Rule {
            scheme,
            host: host.trim_matches(['[', ']']).to_ascii_lowercase(),
            port,
            methods: m,
            paths: p,
            header: name.to_owned(),
            template: template.to_owned(),
            place: Place::Header,
        })
    }

    /// The destination, as shown to the human who approves.
    pub fn destination(&self) -> String {
        let default = if self.scheme == "https" { 443 } else { 80 };
        let mut d = format!("{}://{}", self.scheme, self.host);
        if self.port != default {
            d.push_str(&format!(":{}", self.port));
        }
        if !self.methods.is_empty() {
            d = format!("{} {d}", self.methods.join(","));
        }
        if !self.paths.is_empty() {
            d.push_str(&format!(" {}", self.paths.join(",")));
        }
        if self.place != Place::Header {
            d.push_str(&format!(" (in the {})", self.place.as_str()));
        }
        d
    }

    /// The rule as stored in a sealed label: its fields joined by tabs
    /// (none of them can hold a tab or a line break).
    pub fn to_spec(&self) -> String {
        format!(
            "{}\t{}: {}\t{}\t{}\t{}",
            self.origin(),
            self.header,
            self.template,
            self.methods.join(","),
            self.paths.join(","),
            self.place.as_str()
        )
    }

    /// The same rule with the value going to `place`.
    pub fn with_place(self, place: Place) -> Rule {
        Rule { place, ..self }
    }

    /// The inverse of [`to_spec`](Self::to_spec), through the same checks
    /// as [`parse`](Self::parse).
    pub fn from_spec(spec: &str) -> Result<Rule, RuleError> {
        let mut f = spec.split('\t');
        let (Some(dest), Some(header), Some(methods), Some(paths), place, None) =
            (f.next(), f.next(), f.next(), f.next(), f.next(), f.next())
        else {
            return Err(RuleError::Destination(spec.to_owned()));
        };
        let place = place.map_or(Ok(Place::Header), Place::parse)?;
        let list = |s: &str| -> Vec<String> {
            if s.is_empty() {
                Vec::new()
            } else {
                vec![s.to_owned()]
            }
        };
        Rule::parse(dest, Some(header), &list(methods), &list(paths)).map(|r| r.with_place(place))
    }

    /// `scheme://host:port` (an IPv6 host in brackets).
    fn origin(&self) -> String {
        if self.host.contains(':') {
            format!("{}://[{}]:{}", self.scheme, self.host, self.port)
        } else {
            format!("{}://{}:{}", self.scheme, self.host, self.port)
        }
    }

    /// Whether a request to this origin may carry the value.
    pub fn same_origin(&self, scheme: &str, host: &str, port: u16) -> bool {
        self.scheme == scheme && self.host.eq_ignore_ascii_case(host) && self.port == port
    }

    /// Whether this request may carry the value.
    pub fn allows(&self, scheme: &str, host: &str, port: u16, method: &str, path: &str) -> bool {
        self.same_origin(scheme, host, port)
            && (self.methods.is_empty() || self.methods.iter().any(|m| m == method))
            && (self.paths.is_empty() || self.paths.iter().any(|p| path_matches(p, path)))
    }
}

/// `/v1/*` matches `/v1/` and below; anything else matches itself only.
/// Dot segments are refused outright (`/v1/../admin` is not under `/v1/`).
fn path_matches(pattern: &str, path: &str) -> bool {
    let path = path.split(['?', '#']).next().unwrap_or_default();
    if path.split('/').any(|seg| seg == ".." || seg == ".") || path.contains('%') {
        // Percent-encoded paths could hide dot segments; only the literal
        // form is compared.
        return !path.contains("..") && !path.contains('%') && pattern == path;
    }
    match pattern.strip_suffix('*') {
        Some(prefix) => path.starts_with(prefix),
        None => pattern == path,
    }
}

/// A placeholder for `value`: the same length and the same kind of
/// characters, keeping a known token prefix (`sk_live_`, `ghp_`, …) so
/// SDKs that check it accept the placeholder; the rest is random and
/// marked so it is never mistaken for a real credential.
pub fn placeholder(value: &[u8]) -> Result<String, crate::crypto::CryptoError> {
    const PREFIXES: [&str; 12] = [
        "sk_live_",
        "sk_test_",
        "rk_live_",
        "pk_live_",
        "sk-proj-",
        "sk-ant-",
        "sk-",
        "ghp_",
        "gho_",
        "github_pat_",
        "xoxb-",
        "AKIA",
    ];
    let text = std::str::from_utf8(value).unwrap_or_default();
    let prefix = PREFIXES
        .iter()
        .find(|p| text.starts_with(**p))
        .copied()
        .unwrap_or_default();
    let len = value.len().clamp(prefix.len() + 24, 512);
    let random: [u8; 512] = crate::crypto::random_array()?;
    const ALNUM: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut out = String::with_capacity(len);
    out.push_str(prefix);
    out.push_str("custodyPH");
    for b in random
        .iter()
        .take(len - prefix.len())
        .skip("custodyPH".len())
    {
        out.push(char::from(ALNUM[usize::from(*b) % ALNUM.len()]));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(d: &str) -> Rule {
        Rule::parse(d, None, &[], &[]).expect("parses")
    }

    #[test]
    fn destinations_parse_with_default_ports_and_refuse_junk() {
        let r = rule("https://API.Stripe.com");
        assert_eq!(
            (r.scheme.as_str(), r.host.as_str(), r.port),
            ("https", "api.stripe.com", 443)
        );
        assert_eq!(r.header, "Authorization");
        assert_eq!(r.template, "Bearer {value}");
        assert_eq!(rule("http://localhost:8080/").port, 8080);
        for bad in [
            "api.stripe.com",
            "ftp://x",
            "https://",
            "https://a/b",
            "https://u@h",
            "https://h:0",
        ] {
            assert!(Rule::parse(bad, None, &[], &[]).is_err(), "{bad}");
        }
        assert!(Rule::parse("https://h", Some("X-Key: {value}\r\nEvil: 1"), &[], &[]).is_err());
        assert!(Rule::parse("https://h", Some("X-Key: static"), &[], &[]).is_err());
    }

    #[test]
    fn methods_and_paths_narrow_a_destination() {
        let r = Rule::parse(
            "https://api.example.test",
            Some("X-Api-Key: {value}"),
            &["get,post".into()],
            &["/v1/*".into()],
        )
        .expect("parses");
        assert!(r.allows(
            "https",
            "api.example.test",
            443,
            "GET",
            "/v1/charges?limit=3"
        ));
        assert!(!r.allows("https", "api.example.test", 443, "DELETE", "/v1/charges"));
        assert!(!r.allows("https", "api.example.test", 443, "GET", "/v2/charges"));
        assert!(!r.allows("https", "api.example.test", 443, "GET", "/v1/../admin"));
        assert!(!r.allows("https", "api.example.test", 443, "GET", "/v1/%2e%2e/admin"));
        assert!(!r.allows("http", "api.example.test", 443, "GET", "/v1/x"));
        assert!(!r.allows("https", "api.example.test.evil", 443, "GET", "/v1/x"));
        assert_eq!(r.destination(), "GET,POST https://api.example.test /v1/*");
    }

    #[test]
    fn a_rule_survives_its_label_form() {
        for r in [
            rule("https://api.stripe.com"),
            rule("http://[::1]:8080"),
            Rule::parse(
                "https://h.test:8443",
                Some("X-Key: k={value};"),
                &["GET,post".into()],
                &["/v1/*".into(), "/v2/x".into()],
            )
            .expect("parses"),
            rule("https://maps.example.test").with_place(Place::Query),
            rule("https://hooks.example.test").with_place(Place::Body),
        ] {
            assert_eq!(
                Rule::from_spec(&r.to_spec()),
                Ok(r.clone()),
                "{}",
                r.to_spec()
            );
        }
        // A spec written before places existed reads as the header.
        let old = "https://h.test:443\tAuthorization: Bearer {value}\t\t";
        assert_eq!(Rule::from_spec(old).map(|r| r.place), Ok(Place::Header));
        assert!(Rule::from_spec(&format!("{old}\tcookie")).is_err());
        assert!(Rule::from_spec("https://h\tAuthorization: {value}").is_err());
    }

    #[test]
    fn placeholders_keep_the_prefix_and_never_the_value() {
        let value = b"sk_live_51Habcdefghijklmnopqrstuvwxyz";
        let p = placeholder(value).expect("random");
        assert!(p.starts_with("sk_live_custodyPH"), "{p}");
        assert_eq!(p.len(), value.len());
        assert_ne!(p.as_bytes(), value);
        assert_ne!(placeholder(value).expect("random"), p);
        assert!(placeholder(b"x").expect("random").starts_with("custodyPH"));
    }
}
