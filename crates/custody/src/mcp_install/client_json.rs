//! Claude Code's and Gemini CLI's JSON files: custody's entry merged, key
//! order and every other key kept.

use super::*;

/// A JSON config's text as a tree (no file, or an empty one: an empty
/// object).
pub(super) fn parse_json(existing: Option<&str>) -> Result<Json, InstallError> {
    match existing {
        Some(text) if !text.trim().is_empty() => {
            serde_json::from_str::<Json>(text).map_err(|e| InstallError::Malformed {
                format: "JSON",
                // serde_json's message names the position, never the text.
                detail: e.to_string(),
            })
        }
        _ => Ok(Json::Object(Map::new())),
    }
}

pub(super) fn wrong_object(key: &str) -> InstallError {
    InstallError::WrongShape {
        key: key.to_owned(),
        kind: "object",
    }
}

pub(super) fn merge_json(
    client: Client,
    existing: Option<&str>,
    entry: &ServerEntry,
) -> Result<Plan, InstallError> {
    let mut root = parse_json(existing)?;
    let wrong = wrong_object;
    let prefix = client.entry_key();
    let servers = root
        .as_object_mut()
        .ok_or_else(|| wrong("(the top level)"))?
        .entry("mcpServers")
        .or_insert_with(|| Json::Object(Map::new()))
        .as_object_mut()
        .ok_or_else(|| wrong("mcpServers"))?;
    let mut changes = Vec::new();
    let action = if let Some(existing) = servers.get_mut(SERVER_NAME) {
        let obj = existing.as_object_mut().ok_or_else(|| wrong(prefix))?;
        update_json_entry(client, obj, entry, prefix, &mut changes)?;
        if changes.is_empty() {
            Action::Unchanged
        } else {
            Action::Updated
        }
    } else {
        let mut obj = Map::new();
        if client == Client::Claude {
            obj.insert("type".into(), Json::from("stdio"));
        }
        obj.insert("command".into(), Json::from(entry.command.as_str()));
        obj.insert("args".into(), Json::from(entry.args.clone()));
        if !entry.env.is_empty() {
            let env: Map<String, Json> = entry
                .env
                .iter()
                .map(|(k, v)| (k.clone(), Json::from(v.as_str())))
                .collect();
            obj.insert("env".into(), Json::Object(env));
        }
        for (k, v) in &obj {
            added(&mut changes, prefix, k, v.to_string());
        }
        servers.insert(SERVER_NAME.into(), Json::Object(obj));
        Action::Created
    };
    Ok(finish(action, changes, || {
        // Serializing a `Value` cannot fail (all keys are strings).
        let mut s = serde_json::to_string_pretty(&root).unwrap_or_default();
        s.push('\n');
        s
    }))
}

pub(super) fn update_json_entry(
    client: Client,
    obj: &mut Map<String, Json>,
    entry: &ServerEntry,
    prefix: &str,
    changes: &mut Vec<Change>,
) -> Result<(), InstallError> {
    // Claude Code reads a missing `type` as stdio; only a different one
    // (an "http" entry under our name) is corrected.
    if client == Client::Claude && obj.get("type").is_some_and(|t| t != "stdio") {
        set_json(obj, prefix, "type", Json::from("stdio"), changes);
    }
    set_json(
        obj,
        prefix,
        "command",
        Json::from(entry.command.as_str()),
        changes,
    );
    set_json(obj, prefix, "args", Json::from(entry.args.clone()), changes);
    let env_key = format!("{prefix}.env");
    if !obj.contains_key("env") && entry.env.is_empty() {
        return Ok(());
    }
    let env = obj
        .entry("env")
        .or_insert_with(|| Json::Object(Map::new()))
        .as_object_mut()
        .ok_or_else(|| InstallError::WrongShape {
            key: env_key.clone(),
            kind: "object",
        })?;
    let before = changes.len();
    for name in MANAGED_ENV {
        match entry.env.get(name) {
            Some(v) => set_json(env, &env_key, name, Json::from(v.as_str()), changes),
            None => {
                if let Some(old) = env.shift_remove(name) {
                    changes.push(Change {
                        key: format!("{env_key}.{name}"),
                        old: Some(old.to_string()),
                        new: None,
                    });
                }
            }
        }
    }
    if changes.len() > before && env.is_empty() {
        obj.shift_remove("env");
    }
    Ok(())
}

pub(super) fn set_json(
    obj: &mut Map<String, Json>,
    prefix: &str,
    key: &str,
    new: Json,
    changes: &mut Vec<Change>,
) {
    let old = obj.get(key);
    if old == Some(&new) {
        return;
    }
    changes.push(Change {
        key: format!("{prefix}.{key}"),
        old: old.map(Json::to_string),
        new: Some(new.to_string()),
    });
    // `insert` on an existing key keeps its position (preserve_order).
    obj.insert(key.to_owned(), new);
}
