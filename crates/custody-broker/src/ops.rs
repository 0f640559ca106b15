//! Vault requests through the broker: the same operations as the CLI's
//! direct path, audited, with agents limited to what cannot leak or destroy
//! (they may create environments, declare empty slots and generate values
//! nobody sees; setting, importing and removing are for humans).

use std::sync::Arc;

use custody_core::audit::{AuditEvent, VaultAction};
use custody_core::names::{EnvName, VarName};
use custody_core::vault::{VarKind, VariableUpdate};
use serde_json::Value;
use zeroize::Zeroizing;

use crate::Error;
use crate::broker::{Broker, Peer};
use crate::grants::Requester;
use crate::protocol::{
    CatalogEnvironment, CatalogVariable, EnvCreated, EnvDescribed, EnvRemoved, Imported,
    ListedVariable, Request, VariableRemoved, VariableSaved,
};

fn bad(e: impl ToString) -> Error {
    Error::BadRequest(e.to_string())
}

fn change(by: &str, action: VaultAction, env: &str, var: Option<&str>) -> AuditEvent {
    AuditEvent::VaultChange {
        action,
        environment: env.to_owned(),
        variable: var.map(str::to_owned),
        by: Some(by.to_owned()),
    }
}

/// Agents may not make a slot for a variable that changes how programs load
/// (`LD_PRELOAD`, `BASH_ENV`, `PATH`, …): a human filling it in would hand
/// the agent every command it reaches.
fn no_loader_variable(requester: &Requester, var: &str) -> Result<(), Error> {
    match requester {
        Requester::Agent { .. } if custody_core::names::changes_how_programs_load(var) => {
            Err(Error::Forbidden(format!(
                "'{var}' changes how programs load or what they run, so agents cannot declare or generate it; secrets go in ordinary names (e.g. API_TOKEN)"
            )))
        }
        _ => Ok(()),
    }
}

/// A change by anyone but an agent needs the PIN, proven on this connection
/// (`crate::broker::pin`): a process that left an agent's tree (and so
/// looks like a terminal) cannot change secrets, sources or policy without
/// it. Agents make only the changes their own rules allow (they never hold
/// the PIN).
fn pin_for_change(
    requester: &Requester,
    verified: &Option<crate::broker::pin::PinVerified>,
    what: &str,
) -> Result<(), Error> {
    match (requester, verified) {
        (Requester::Agent { .. }, _) | (_, Some(_)) => Ok(()),
        (Requester::Terminal { .. }, None) => Err(Error::PinRequired(format!(
            "{what} needs the approval PIN: custody asks for it on a terminal; scripts pass --pin-stdin (the PIN on its own line of stdin, after the passphrase line if there is one)"
        ))),
    }
}

fn humans_only(requester: &Requester, what: &str) -> Result<(), Error> {
    match requester {
        Requester::Agent { .. } => Err(Error::Forbidden(format!(
            "agents cannot {what}: ask the user to do it with the custody CLI"
        ))),
        Requester::Terminal { .. } => Ok(()),
    }
}

/// Every environment `peer` may see, with its variables' names and facts
/// (never values): [`Request::Catalog`]. Typed, so the connection can write
/// it without building a JSON tree first.
pub fn catalog(broker: &Arc<Broker>, peer: &Peer) -> Result<Vec<CatalogEnvironment>, Error> {
    let client = broker.requester(peer).client_name().to_owned();
    let policy = broker.policy();
    broker.with_vault(|v| {
        let mut out = Vec::new();
        for e in v.environments()? {
            if !policy.visible(&client, &e.name) {
                continue;
            }
            let variables = v
                .variables(&EnvName::new(&e.name)?)?
                .into_iter()
                .map(|i| CatalogVariable {
                    kind: i.kind_label(),
                    name: i.name,
                    description: i.description,
                    is_set: i.is_set,
                })
                .collect();
            out.push(CatalogEnvironment {
                always_approve: policy.always_approve(&client, &e.name),
                name: e.name,
                description: e.description,
                variables,
            });
        }
        Ok(out)
    })
}

/// Handles the vault-changing and listing requests.
pub fn vault_request(
    broker: &Arc<Broker>,
    peer: &Peer,
    req: Request,
    secret: Option<Zeroizing<Vec<u8>>>,
    verified: Option<crate::broker::pin::PinVerified>,
) -> Result<Value, Error> {
    let requester = broker.requester(peer);
    let pin = |what: &str| pin_for_change(&requester, &verified, what);
    let by = requester.describe();
    let client = requester.client_name().to_owned();
    let policy = broker.policy();
    let visible = |env: &str| -> Result<(), Error> {
        if policy.visible(&client, env) {
            Ok(())
        } else {
            Err(Error::Forbidden(format!(
                "environment '{env}' is not available to {client} by policy"
            )))
        }
    };
    // An environment whose every run needs a fresh approval is protected:
    // an agent may not change it silently either.
    let unprotected = |env: &str| -> Result<(), Error> {
        match requester {
            Requester::Agent { .. } if policy.always_approve(&client, env) => {
                Err(Error::Protected(format!(
                    "environment '{env}' is protected by policy (every use needs a fresh approval): ask the user to make this change with the custody CLI"
                )))
            }
            _ => Ok(()),
        }
    };
    match req {
        Request::EnvCreate { name, description } => {
            pin("creating an environment")?;
            let env = EnvName::new(&name).map_err(bad)?;
            visible(&name)?;
            unprotected(&name)?;
            broker.change_vault(
                change(&by, VaultAction::CreateEnvironment, &name, None),
                |v| v.create_environment(&env, &description),
            )?;
            crate::protocol::answer(EnvCreated { created: name })
        }
        Request::EnvList => {
            let envs = broker.with_vault(|v| v.environments())?;
            let envs: Vec<_> = envs
                .into_iter()
                .filter(|e| policy.visible(&client, &e.name))
                .collect();
            crate::protocol::answer(envs)
        }
        Request::SourceAdd { source } => {
            humans_only(&requester, "configure dynamic sources")?;
            pin("configuring a dynamic source")?;
            broker
                .define_source(source, &by)
                .and_then(crate::protocol::answer)
        }
        Request::SourceList => broker.list_sources(),
        Request::SourceRemove { name } => {
            humans_only(&requester, "remove dynamic sources")?;
            pin("removing a dynamic source")?;
            broker
                .remove_source(&name, &by)
                .and_then(crate::protocol::answer)
        }
        Request::EnvDescribe { name, description } => {
            let env = EnvName::new(&name).map_err(bad)?;
            visible(&name)?;
            if let Some(d) = description {
                humans_only(&requester, "change descriptions")?;
                pin("changing a description")?;
                broker.change_vault(
                    change(&by, VaultAction::DescribeEnvironment, &name, None),
                    |v| v.describe_environment(&env, &d),
                )?;
            }
            let (info, vars) =
                broker.with_vault(|v| Ok((v.environment(&env)?, v.variables(&env)?)))?;
            crate::protocol::answer(EnvDescribed {
                environment: info,
                variables: vars,
                always_approve: policy.always_approve(&client, &name),
            })
        }
        Request::EnvRemove { name } => {
            humans_only(&requester, "remove environments")?;
            pin("removing an environment")?;
            let env = EnvName::new(&name).map_err(bad)?;
            let n = broker.change_vault(
                change(&by, VaultAction::RemoveEnvironment, &name, None),
                |v| v.remove_environment(&env),
            )?;
            crate::protocol::answer(EnvRemoved {
                removed: name,
                variables: n,
            })
        }
        Request::Set {
            env,
            var,
            description,
            kind,
            bindings,
        } => {
            humans_only(&requester, "set values")?;
            pin("setting a value")?;
            let value = secret.ok_or_else(|| bad("the value must be sent in a secret frame"))?;
            let (e, v) = (
                EnvName::new(&env).map_err(bad)?,
                VarName::new(&var).map_err(bad)?,
            );
            let update = VariableUpdate {
                description,
                kind,
                source: None,
                bindings,
            };
            let created = broker.change_vault(
                change(&by, VaultAction::SetVariable, &env, Some(&var)),
                |vault| vault.set_variable(&e, &v, &value, &update),
            )?;
            crate::protocol::answer(VariableSaved {
                too_short_to_mask: Some(!custody_core::mask::long_enough(&value)),
                ..VariableSaved::new(env, var, created)
            })
        }
        Request::Declare {
            env,
            var,
            description,
            kind,
            source,
        } => {
            visible(&env)?;
            unprotected(&env)?;
            pin("declaring a variable")?;
            let (e, v) = (
                EnvName::new(&env).map_err(bad)?,
                VarName::new(&var).map_err(bad)?,
            );
            no_loader_variable(&requester, &var)?;
            if matches!(requester, Requester::Agent { .. }) {
                // Re-declaring would change a human's variable (its kind,
                // its description): agents declare new slots only.
                let exists = broker
                    .with_vault(|vault| vault.variables(&e))?
                    .iter()
                    .any(|x| x.name == var);
                if exists {
                    return Err(Error::Exists(format!(
                        "'{env}/{var}' already exists; agents cannot change it: ask the user"
                    )));
                }
            }
            let source = match kind {
                Some(VarKind::Dynamic) => {
                    // A dynamic variable mints credentials with a source's
                    // admin rights: only a human points one at a source.
                    humans_only(&requester, "declare dynamic variables")?;
                    Some(broker.check_source_reference(source.as_deref())?)
                }
                _ => None,
            };
            let update = VariableUpdate {
                description,
                kind,
                source,
                bindings: None,
            };
            let created = broker.change_vault(
                change(&by, VaultAction::DeclareVariable, &env, Some(&var)),
                |vault| vault.declare_variable(&e, &v, &update),
            )?;
            crate::protocol::answer(VariableSaved::new(env, var, created))
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
            unprotected(&env)?;
            pin("generating a value")?;
            let (e, v) = (
                EnvName::new(&env).map_err(bad)?,
                VarName::new(&var).map_err(bad)?,
            );
            no_loader_variable(&requester, &var)?;
            if matches!(requester, Requester::Agent { .. }) {
                // Replacing a value a human stored would destroy it.
                let set = broker
                    .with_vault(|vault| vault.variables(&e))?
                    .iter()
                    .any(|x| x.name == var && x.is_set);
                if set {
                    return Err(Error::Exists(format!(
                        "'{env}/{var}' already has a value; agents cannot replace it: ask the user to run `custody generate {env} {var}` (or `custody unset` first)"
                    )));
                }
            }
            let value = custody_core::generate::random_value(length, alphabet).map_err(bad)?;
            let update = VariableUpdate {
                description,
                kind,
                source: None,
                bindings: None,
            };
            let created = broker.change_vault(
                change(&by, VaultAction::GenerateVariable, &env, Some(&var)),
                |vault| vault.set_variable(&e, &v, &value, &update),
            )?;
            crate::protocol::answer(VariableSaved {
                length: Some(length),
                alphabet: Some(alphabet),
                ..VariableSaved::new(env, var, created)
            })
        }
        Request::Bind { env, var, bindings } => {
            humans_only(&requester, "bind variables to destinations")?;
            pin("binding a variable")?;
            let (e, v) = (
                EnvName::new(&env).map_err(bad)?,
                VarName::new(&var).map_err(bad)?,
            );
            // Binding names an existing variable; it never declares one.
            if !broker
                .with_vault(|vault| vault.variables(&e))?
                .iter()
                .any(|x| x.name == var)
            {
                return Err(Error::NotFound(format!("no variable '{env}/{var}'")));
            }
            let update = VariableUpdate {
                bindings: Some(bindings),
                ..VariableUpdate::default()
            };
            broker.change_vault(
                change(&by, VaultAction::BindVariable, &env, Some(&var)),
                |vault| vault.declare_variable(&e, &v, &update),
            )?;
            crate::protocol::answer(VariableSaved::new(env, var, false))
        }
        Request::Unset { env, var } => {
            humans_only(&requester, "remove variables")?;
            pin("removing a variable")?;
            let (e, v) = (
                EnvName::new(&env).map_err(bad)?,
                VarName::new(&var).map_err(bad)?,
            );
            broker.change_vault(
                change(&by, VaultAction::RemoveVariable, &env, Some(&var)),
                |vault| vault.unset_variable(&e, &v),
            )?;
            crate::protocol::answer(VariableRemoved {
                environment: env,
                removed: var,
            })
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
                for variable in broker.with_vault(|v| v.variables(&e))? {
                    rows.push(ListedVariable {
                        environment: name.clone(),
                        variable,
                    });
                }
            }
            crate::protocol::answer(rows)
        }
        Request::Import { env } => {
            humans_only(&requester, "import files")?;
            pin("importing a file")?;
            let text = secret.ok_or_else(|| bad("the file must be sent in a secret frame"))?;
            let e = EnvName::new(&env).map_err(bad)?;
            let outcome = broker
                .change_vault(change(&by, VaultAction::Import, &env, None), |v| {
                    custody_core::import::import_dotenv(v, &e, &text, &mut |_, _| {})
                })?;
            crate::protocol::answer(Imported {
                environment: env,
                imported: outcome.report.created + outcome.report.updated,
                outcome,
            })
        }
        Request::AuditTail { limit } => audit_tail(broker, &requester, limit),
        // Dispatched elsewhere (`server::dispatch`, the connection): listed,
        // not caught by a wildcard, so a new request must be placed.
        Request::Hello { .. }
        | Request::Status
        | Request::Unlock
        | Request::Lock
        | Request::Catalog
        | Request::RegisterSession { .. }
        | Request::AgentLaunch { .. }
        | Request::Run(_)
        | Request::RunInput { .. }
        | Request::RunResize(_)
        | Request::Approve { .. }
        | Request::PinChallenge
        | Request::PinExchange { .. }
        | Request::KeyChallenge
        | Request::PinAbort
        | Request::PolicyShow
        | Request::PolicyApply { .. }
        | Request::Deny { .. }
        | Request::Pending
        | Request::RequestStatus { .. }
        | Request::Cancel { .. }
        | Request::Grants
        | Request::Leases
        | Request::Revoke(_)
        | Request::Watch
        | Request::AuditVerify
        | Request::Scan { .. } => Err(Error::Internal("not a vault request".into())),
    }
}

/// The last `limit` audit records that concern `requester`: for an agent,
/// its sessions, its requests and their decisions, the grants made from them
/// (or for it by policy) and the leases run under those; for a terminal,
/// every record. Oldest first. Records hold names and ids only (G1).
fn audit_tail(broker: &Arc<Broker>, requester: &Requester, limit: usize) -> Result<Value, Error> {
    use std::collections::{BTreeSet, VecDeque};
    let limit = limit.clamp(1, crate::protocol::MAX_AUDIT_TAIL);
    let path = broker.cfg.home.join(custody_core::audit::AUDIT_FILE);
    let reader = custody_core::audit::read(&path, None).map_err(|e| {
        Error::AuditUnreadable(format!(
            "the audit log cannot be read ({e}): ask the user to run `custody audit verify`"
        ))
    })?;
    let (me, agent_pid) = match requester {
        Requester::Agent { agent_pid, .. } => (Some(requester.describe()), *agent_pid),
        Requester::Terminal { .. } => (None, 0),
    };
    // Grants made for this requester by policy carry no request id: take
    // them from the grants in force.
    let mut grants: BTreeSet<String> = broker
        .grants(Some(requester))
        .into_iter()
        .map(|g| g.grant_id)
        .collect();
    let (mut requests, mut leases, mut sessions) =
        (BTreeSet::new(), BTreeSet::new(), BTreeSet::new());
    let mut tail = VecDeque::with_capacity(limit);
    for record in reader.flatten() {
        let mine = match (&me, &record.event) {
            (None, _) => true,
            (
                Some(me),
                AuditEvent::Request {
                    request_id,
                    requester,
                    ..
                },
            ) => {
                let m = requester == me;
                if m {
                    requests.insert(request_id.clone());
                }
                m
            }
            (
                _,
                AuditEvent::SessionStart {
                    session_id,
                    parent_pid,
                    ..
                },
            ) => {
                let m = *parent_pid == Some(agent_pid);
                if m {
                    sessions.insert(session_id.clone());
                }
                m
            }
            (_, AuditEvent::SessionEnd { session_id }) => sessions.contains(session_id),
            (_, AuditEvent::AgentStart { pid, .. }) => *pid == agent_pid,
            (
                _,
                AuditEvent::Approval { request_id, .. }
                | AuditEvent::Denial { request_id, .. }
                | AuditEvent::RequestExpired { request_id },
            ) => requests.contains(request_id),
            (
                _,
                AuditEvent::Grant {
                    grant_id,
                    request_id,
                    ..
                },
            ) => {
                let m = requests.contains(request_id) || grants.contains(grant_id);
                if m {
                    grants.insert(grant_id.clone());
                }
                m
            }
            (_, AuditEvent::GrantExpired { grant_id }) => grants.contains(grant_id),
            (
                _,
                AuditEvent::LeaseStart {
                    lease_id, grant_id, ..
                },
            ) => {
                let m = grants.contains(grant_id);
                if m {
                    leases.insert(lease_id.clone());
                }
                m
            }
            (_, AuditEvent::LeaseEnd { lease_id, .. })
            | (
                _,
                AuditEvent::CredentialMinted { lease_id, .. }
                | AuditEvent::CredentialRevoked { lease_id, .. }
                | AuditEvent::CredentialIrrevocable { lease_id, .. }
                | AuditEvent::LeakFound { lease_id, .. }
                | AuditEvent::ProxyRequest { lease_id, .. }
                | AuditEvent::ExfiltrationBlocked { lease_id, .. },
            ) => leases.contains(lease_id),
            (Some(me), AuditEvent::VaultChange { by: Some(by), .. }) => by == me,
            (Some(me), AuditEvent::Revoke { target, by }) => {
                by == me
                    || requests.contains(target)
                    || grants.contains(target)
                    || leases.contains(target)
            }
            _ => false,
        };
        if mine {
            if tail.len() == limit {
                tail.pop_front();
            }
            tail.push_back(record);
        }
    }
    crate::protocol::answer(Vec::from(tail))
}
