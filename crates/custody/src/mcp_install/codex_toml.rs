//! Codex's `config.toml`: custody's entry merged with `toml_edit`, comments
//! and every other key kept.

use super::*;

pub(super) fn merge_toml(text: &str, entry: &ServerEntry) -> Result<Plan, InstallError> {
    let mut doc: DocumentMut =
        text.parse()
            .map_err(|e: toml_edit::TomlError| InstallError::Malformed {
                format: "TOML",
                detail: toml_detail(text, &e),
            })?;
    let prefix = Client::Codex.entry_key();
    let root = doc.as_table_mut();
    if !root.contains_key("mcp_servers") {
        // Implicit: no empty `[mcp_servers]` header, only `[mcp_servers.custody]`.
        let mut t = Table::new();
        t.set_implicit(true);
        root.insert("mcp_servers", Item::Table(t));
    }
    let wrong = |key: &str| InstallError::WrongShape {
        key: key.to_owned(),
        kind: "table",
    };
    let servers = root
        .get_mut("mcp_servers")
        .ok_or_else(|| wrong("mcp_servers"))?;
    let mut changes = Vec::new();
    // `Item::get_mut` would insert the key: look it up through `TableLike`.
    let present = servers
        .as_table_like()
        .ok_or_else(|| wrong("mcp_servers"))?
        .contains_key(SERVER_NAME);
    let action = if present {
        let t = servers
            .as_table_like_mut()
            .and_then(|s| s.get_mut(SERVER_NAME))
            .and_then(Item::as_table_like_mut)
            .ok_or_else(|| wrong(prefix))?;
        update_toml_entry(t, entry, prefix, &mut changes)?;
        if changes.is_empty() {
            Action::Unchanged
        } else {
            Action::Updated
        }
    } else {
        let fields = toml_fields(entry);
        for (k, v) in &fields {
            added(&mut changes, prefix, k, render_toml(v));
        }
        match servers {
            Item::Table(t) => {
                let mut new = Table::new();
                new.set_dotted(t.is_dotted());
                for (k, v) in fields {
                    new.insert(&k, Item::Value(v));
                }
                t.insert(SERVER_NAME, Item::Table(new));
            }
            Item::Value(Toml::InlineTable(t)) => {
                let mut new = InlineTable::new();
                for (k, v) in fields {
                    new.insert(k, v);
                }
                t.insert(SERVER_NAME, Toml::InlineTable(new));
            }
            _ => return Err(wrong("mcp_servers")),
        }
        Action::Created
    };
    Ok(finish(action, changes, || doc.to_string()))
}

/// The entry's keys in the order a new entry is written.
pub(super) fn toml_fields(entry: &ServerEntry) -> Vec<(String, Toml)> {
    let mut fields = vec![
        ("command".to_owned(), Toml::from(entry.command.as_str())),
        ("args".to_owned(), toml_array(&entry.args)),
    ];
    if entry.approve_tools {
        fields.push((CODEX_APPROVAL_KEY.to_owned(), Toml::from(CODEX_APPROVE)));
    }
    if !entry.env.is_empty() {
        let env: InlineTable = entry
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), Toml::from(v.as_str())))
            .collect();
        fields.push(("env".to_owned(), Toml::InlineTable(env)));
    }
    fields
}

pub(super) fn toml_array(items: &[String]) -> Toml {
    Toml::Array(items.iter().map(String::as_str).collect())
}

pub(super) fn update_toml_entry(
    t: &mut dyn TableLike,
    entry: &ServerEntry,
    prefix: &str,
    changes: &mut Vec<Change>,
) -> Result<(), InstallError> {
    set_toml(
        t,
        prefix,
        "command",
        Toml::from(entry.command.as_str()),
        changes,
    );
    set_toml(t, prefix, "args", toml_array(&entry.args), changes);
    // Added when missing; a value the user chose is kept.
    if entry.approve_tools && !t.contains_key(CODEX_APPROVAL_KEY) {
        set_toml(
            t,
            prefix,
            CODEX_APPROVAL_KEY,
            Toml::from(CODEX_APPROVE),
            changes,
        );
    }
    let env_key = format!("{prefix}.env");
    match t.get_mut("env") {
        None => {
            if !entry.env.is_empty() {
                let env: InlineTable = entry
                    .env
                    .iter()
                    .map(|(k, v)| (k.as_str(), Toml::from(v.as_str())))
                    .collect();
                for (k, v) in env.iter() {
                    added(changes, &env_key, k, render_toml(v));
                }
                t.insert("env", Item::Value(Toml::InlineTable(env)));
            }
        }
        Some(item) => {
            let inline = item.is_inline_table();
            let env = item
                .as_table_like_mut()
                .ok_or_else(|| InstallError::WrongShape {
                    key: env_key.clone(),
                    kind: "table",
                })?;
            let before = changes.len();
            for name in MANAGED_ENV {
                match entry.env.get(name) {
                    Some(v) => set_toml(env, &env_key, name, Toml::from(v.as_str()), changes),
                    None => {
                        if let Some(old) = env.remove(name) {
                            changes.push(Change {
                                key: format!("{env_key}.{name}"),
                                old: Some(render_item(&old)),
                                new: None,
                            });
                        }
                    }
                }
            }
            if changes.len() > before {
                if env.is_empty() {
                    // Drop an env table that only our removals emptied.
                    t.remove("env");
                } else if inline {
                    // Re-space `{ A = "x" , B = "y"}` after a removal; a
                    // `[...env]` table keeps its layout and comments.
                    env.fmt();
                }
            }
        }
    }
    Ok(())
}

/// Sets `t[key] = new` unless it already holds that value; keeps the old
/// value's surrounding whitespace and trailing comment.
pub(super) fn set_toml(
    t: &mut dyn TableLike,
    prefix: &str,
    key: &str,
    mut new: Toml,
    changes: &mut Vec<Change>,
) {
    match t.get_mut(key) {
        Some(Item::Value(old)) if same_toml(old, &new) => {}
        Some(item) => {
            let old = render_item(item);
            if let Item::Value(v) = item {
                *new.decor_mut() = v.decor().clone();
            }
            changes.push(Change {
                key: format!("{prefix}.{key}"),
                old: Some(old),
                new: Some(render_toml(&new)),
            });
            *item = Item::Value(new);
        }
        None => {
            added(changes, prefix, key, render_toml(&new));
            t.insert(key, Item::Value(new));
        }
    }
}

pub(super) fn same_toml(a: &Toml, b: &Toml) -> bool {
    match (a, b) {
        (Toml::String(x), Toml::String(y)) => x.value() == y.value(),
        (Toml::Array(x), Toml::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y.iter()).all(|(p, q)| same_toml(p, q))
        }
        _ => false,
    }
}

pub(super) fn render_toml(v: &Toml) -> String {
    v.clone().decorated("", "").to_string()
}

pub(super) fn render_item(item: &Item) -> String {
    match item {
        Item::Value(v) => render_toml(v),
        Item::Table(_) => "(a table)".to_owned(),
        Item::ArrayOfTables(_) => "(an array of tables)".to_owned(),
        Item::None => "(nothing)".to_owned(),
    }
}

/// "line L, column C: reason", without the parser's quote of the line.
pub(super) fn toml_detail(text: &str, e: &toml_edit::TomlError) -> String {
    let reason = e.message().lines().next().unwrap_or("parse error").trim();
    match e.span() {
        Some(span) => {
            let (line, col) = line_col(text, span.start);
            format!("line {line}, column {col}: {reason}")
        }
        None => reason.to_owned(),
    }
}

pub(super) fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

// ---------------------------------------------------------------------------
// JSON (Claude Code, Gemini CLI, Cursor): serde_json with preserve_order
// keeps key order; the file is re-printed with two-space indentation.
