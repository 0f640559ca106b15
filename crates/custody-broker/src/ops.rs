//! Vault requests through the broker: the same operations as the CLI's
//! direct path, audited, with agents limited to what cannot leak or destroy
//! (they may create environments, declare empty slots and generate values
//! nobody sees; setting, importing and removing are for humans).

use std::sync::Arc;

use custody_core::audit::{AuditEvent, VaultAction};
use custody_core::names::{EnvName, VarName};
use custody_core::policy::Policy;
use custody_core::vault::VariableUpdate;
use serde_json::{Value, json};
use zeroize::Zeroizing;

use crate::broker::{Broker, Peer};
use crate::grants::Requester;
use crate::protocol::{Request, WireError};

fn bad(e: impl ToString) -> WireError {
    WireError::new("bad_request", e.to_string())
}

fn change(action: VaultAction, env: &str, var: Option<&str>) -> AuditEvent {
    AuditEvent::VaultChange {
        action,
        environment: env.to_owned(),
        variable: var.map(str::to_owned),
    }
}

fn humans_only(requester: &Requester, what: &str) -> Result<(), WireError> {
    match requester {
        Requester::Agent { .. } => Err(WireError::new(
            "forbidden",
            format!("agents cannot {what}: ask the user to do it with the custody CLI"),
        )),
        Requester::Terminal { .. } => Ok(()),
    }
}

/// Handles the vault-changing and listing requests.
pub fn vault_request(
    broker: &Arc<Broker>,
    peer: &Peer,
    req: Request,
    secret: Option<Zeroizing<Vec<u8>>>,
) -> Result<Value, WireError> {
    let requester = broker.requester(peer);
    let client = requester.client_name().to_owned();
    let policy = Policy::load(&broker.cfg.home.join(custody_core::policy::POLICY_FILE))
        .map_err(|e| WireError::new("policy_error", e.to_string()))?;
    let visible = |env: &str| -> Result<(), WireError> {
        if policy.visible(&client, env) {
            Ok(())
        } else {
            Err(WireError::new(
                "forbidden",
                format!("environment '{env}' is not available to {client} by policy"),
            ))
        }
    };
    match req {
        Request::EnvCreate { name, description } => {
            let env = EnvName::new(&name).map_err(bad)?;
            visible(&name)?;
            broker.change_vault(change(VaultAction::CreateEnvironment, &name, None), |v| {
                v.create_environment(&env, &description)
            })?;
            Ok(json!({"created": name}))
        }
        Request::EnvList => {
            let envs = broker.with_vault(|v| v.environments())?;
            let envs: Vec<_> = envs
                .into_iter()
                .filter(|e| policy.visible(&client, &e.name))
                .collect();
            Ok(serde_json::to_value(envs).unwrap_or_default())
        }
        Request::EnvDescribe { name, description } => {
            let env = EnvName::new(&name).map_err(bad)?;
            visible(&name)?;
            if let Some(d) = description {
                humans_only(&requester, "change descriptions")?;
                broker
                    .change_vault(change(VaultAction::DescribeEnvironment, &name, None), |v| {
                        v.describe_environment(&env, &d)
                    })?;
            }
            let (info, vars) =
                broker.with_vault(|v| Ok((v.environment(&env)?, v.variables(&env)?)))?;
            Ok(json!({"environment": info, "variables": vars,
                      "always_approve": policy.always_approve(&client, &name)}))
        }
        Request::EnvRemove { name } => {
            humans_only(&requester, "remove environments")?;
            let env = EnvName::new(&name).map_err(bad)?;
            let n = broker
                .change_vault(change(VaultAction::RemoveEnvironment, &name, None), |v| {
                    v.remove_environment(&env)
                })?;
            Ok(json!({"removed": name, "variables": n}))
        }
        Request::Set {
            env,
            var,
            description,
            kind,
        } => {
            humans_only(&requester, "set values")?;
            let value = secret.ok_or_else(|| bad("the value must be sent in a secret frame"))?;
            let (e, v) = (
                EnvName::new(&env).map_err(bad)?,
                VarName::new(&var).map_err(bad)?,
            );
            let update = VariableUpdate { description, kind };
            let created = broker.change_vault(
                change(VaultAction::SetVariable, &env, Some(&var)),
                |vault| vault.set_variable(&e, &v, &value, &update),
            )?;
            Ok(
                json!({"environment": env, "variable": var, "created": created,
                      "too_short_to_mask": value.len() < custody_core::mask::MIN_MASKABLE_LEN}),
            )
        }
        Request::Declare {
            env,
            var,
            description,
            kind,
        } => {
            visible(&env)?;
            let (e, v) = (
                EnvName::new(&env).map_err(bad)?,
                VarName::new(&var).map_err(bad)?,
            );
            let update = VariableUpdate { description, kind };
            let created = broker.change_vault(
                change(VaultAction::DeclareVariable, &env, Some(&var)),
                |vault| vault.declare_variable(&e, &v, &update),
            )?;
            Ok(json!({"environment": env, "variable": var, "created": created}))
        }
        Request::Generate {
            env,
            var,
            length,
            alphabet,
            description,
            kind,
        } => {
            visible(&env)?;
            let (e, v) = (
                EnvName::new(&env).map_err(bad)?,
                VarName::new(&var).map_err(bad)?,
            );
            let value = custody_core::generate::random_value(length, alphabet).map_err(bad)?;
            let update = VariableUpdate { description, kind };
            let created = broker.change_vault(
                change(VaultAction::GenerateVariable, &env, Some(&var)),
                |vault| vault.set_variable(&e, &v, &value, &update),
            )?;
            Ok(
                json!({"environment": env, "variable": var, "created": created,
                      "length": length, "alphabet": alphabet}),
            )
        }
        Request::Unset { env, var } => {
            humans_only(&requester, "remove variables")?;
            let (e, v) = (
                EnvName::new(&env).map_err(bad)?,
                VarName::new(&var).map_err(bad)?,
            );
            broker.change_vault(
                change(VaultAction::RemoveVariable, &env, Some(&var)),
                |vault| vault.unset_variable(&e, &v),
            )?;
            Ok(json!({"environment": env, "removed": var}))
        }
        Request::List { env } => {
            let envs: Vec<String> = match env {
                Some(e) => {
                    visible(&e)?;
                    vec![e]
                }
                None => broker
                    .with_vault(|v| v.environments())?
                    .into_iter()
                    .map(|e| e.name)
                    .filter(|n| policy.visible(&client, n))
                    .collect(),
            };
            let mut rows = Vec::new();
            for name in envs {
                let e = EnvName::new(&name).map_err(bad)?;
                for var in broker.with_vault(|v| v.variables(&e))? {
                    let mut row = serde_json::to_value(var).unwrap_or_default();
                    row["environment"] = json!(name);
                    rows.push(row);
                }
            }
            Ok(Value::Array(rows))
        }
        Request::Import { env } => {
            humans_only(&requester, "import files")?;
            let text = secret.ok_or_else(|| bad("the file must be sent in a secret frame"))?;
            let e = EnvName::new(&env).map_err(bad)?;
            let outcome = broker.change_vault(change(VaultAction::Import, &env, None), |v| {
                custody_core::import::import_dotenv(v, &e, &text, &mut |_, _| {})
            })?;
            let mut v = serde_json::to_value(&outcome).unwrap_or_default();
            v["environment"] = json!(env);
            v["imported"] = json!(outcome.report.created + outcome.report.updated);
            Ok(v)
        }
        _ => Err(WireError::new("bad_request", "unsupported request")),
    }
}
