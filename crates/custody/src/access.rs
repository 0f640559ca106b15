//! How a command reaches the vault: through the broker when it runs (it
//! holds the unlocked key; no passphrase needed), otherwise by opening the
//! vault file directly with the passphrase. This is the one place that
//! decides; the subcommands only see [`Backend`].

use std::path::PathBuf;

use anyhow::{Context, anyhow};
use custody_broker::protocol::{ClientInfo, Request};
use custody_broker::{Client, ClientError};
use custody_core::audit::{AuditChain, AuditEvent, VaultAction};
use custody_core::import::ImportOutcome;
use custody_core::names::{EnvName, VarName};
use custody_core::paths;
use custody_core::secret::{Passphrase, Pin};
use custody_core::vault::audited::{self, ChangeError};
use custody_core::vault::{EnvironmentInfo, VariableInfo, VariableUpdate, Vault, VaultError};
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::global::Global;
use crate::input::{self, SecretInput};

/// The vault file this invocation uses.
pub fn vault_path() -> anyhow::Result<PathBuf> {
    paths::home_dir()
        .map(|h| h.join(paths::VAULT_FILE))
        .context("cannot tell where the vault lives: set CUSTODY_HOME (or HOME)")
}

/// The broker's socket.
pub fn socket_path() -> PathBuf {
    custody_broker::paths::socket_path()
}

/// Our identity in `hello`.
pub fn client_info() -> ClientInfo {
    ClientInfo {
        kind: "cli".into(),
        name: "custody".into(),
        version: env!("CARGO_PKG_VERSION").into(),
    }
}

/// Connects to the running broker, if any.
pub fn broker() -> anyhow::Result<Option<Client>> {
    // One connection attempt: a refused or missing socket means no broker.
    match Client::connect(&socket_path(), client_info()) {
        Ok(c) => Ok(Some(c)),
        Err(ClientError::NotRunning(_)) => Ok(None),
        Err(e) => Err(broker_err(e)),
    }
}

/// Connects to the broker, or says how to start it.
pub fn require_broker() -> anyhow::Result<Client> {
    broker()?.ok_or_else(|| {
        anyhow!(
            "the custody broker is not running: start it with `custody unlock` (socket {})",
            socket_path().display()
        )
    })
}

/// Wraps a broker error so `main` can pick the exit code.
pub fn broker_err(e: ClientError) -> anyhow::Error {
    anyhow::Error::new(BrokerFailure(for_the_human(e)))
}

/// The broker words some errors for agents ("ask the user to …"); the CLI
/// speaks to the human at the keyboard instead.
fn for_the_human(e: ClientError) -> ClientError {
    match e {
        ClientError::Broker(w) if w.code == "locked" => {
            ClientError::Broker(custody_broker::protocol::WireError::new(
                "locked",
                if w.message.contains("while the request waited") {
                    "the vault was locked while the request waited: run `custody unlock`, then run the command again"
                } else {
                    "the vault is locked: run `custody unlock` first (it asks for the passphrase)"
                },
            ))
        }
        other => other,
    }
}

/// `client`'s broker, or `None` when it is locked (a locked broker holds
/// no vault: commands open the file with the passphrase, as without one).
fn unlocked(mut client: Client) -> Option<Client> {
    match client.status() {
        Ok(s) if s.locked => None,
        _ => Some(client),
    }
}

/// A broker error, kept typed for the exit code.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BrokerFailure(pub ClientError);

/// The passphrase line (with `--passphrase-stdin`) and the PIN line (with
/// `pin_stdin`), in that order.
fn stdin_lines(
    global: &Global,
    secrets: &mut SecretInput,
    pin_stdin: bool,
) -> anyhow::Result<(Option<Passphrase>, Option<Pin>)> {
    let passphrase = if global.passphrase_stdin {
        Some(secrets.passphrase()?)
    } else {
        None
    };
    let pin = if pin_stdin {
        Some(secrets.pin()?)
    } else {
        None
    };
    Ok((passphrase, pin))
}

/// Where vault operations go.
pub enum Backend {
    /// The vault file, opened with the passphrase.
    Direct(Box<Direct>),
    /// The running broker, and how a change is proven to it.
    Broker(Client, ChangeAuth),
}

/// How a change through the broker is proven: the approval PIN (a line of
/// stdin with `--pin-stdin`, or asked on the terminal when needed), or the
/// passphrase given with `--passphrase-stdin` (the vault file opened with
/// it yields the key the proof is made with). Neither crosses the socket.
pub enum ChangeAuth {
    /// The PIN, read or asked.
    Pin(Option<Pin>),
    /// The vault's change-proof subkey, from the passphrase.
    VaultKey(custody_core::crypto::Key),
}

impl ChangeAuth {
    /// For a command that talks to the broker only: reads the passphrase
    /// line (with `--passphrase-stdin`) and then the PIN line (with
    /// `pin_stdin`), in the documented stdin order.
    pub fn read(
        global: &Global,
        secrets: &mut SecretInput,
        pin_stdin: bool,
    ) -> anyhow::Result<ChangeAuth> {
        let (passphrase, pin) = stdin_lines(global, secrets, pin_stdin)?;
        ChangeAuth::from_inputs(pin, passphrase)
    }

    fn from_inputs(pin: Option<Pin>, passphrase: Option<Passphrase>) -> anyhow::Result<ChangeAuth> {
        Ok(match (pin, passphrase) {
            (Some(pin), _) => ChangeAuth::Pin(Some(pin)),
            (None, Some(passphrase)) => {
                let vault = Vault::unlock(&vault_path()?, passphrase.expose())?;
                ChangeAuth::VaultKey(vault.subkey(custody_core::crypto::Subkey::ChangeProof))
            }
            (None, None) => ChangeAuth::Pin(None),
        })
    }

    /// Sends a change, proven.
    pub fn call(
        &mut self,
        client: &mut Client,
        req: Request,
        secret: Option<&[u8]>,
    ) -> anyhow::Result<Value> {
        match self {
            ChangeAuth::Pin(stored) => {
                let pin = change_pin(stored)?;
                client.call_with_pin(req, pin.expose(), secret)
            }
            ChangeAuth::VaultKey(key) => client.call_with_vault_key(req, key, secret),
        }
        .map_err(broker_err)
    }
}

/// The approval PIN for a change through the broker: the line of stdin
/// read with `--pin-stdin`, or a hidden prompt on the terminal; without
/// either, an error that says how to give it.
pub fn change_pin(stored: &mut Option<Pin>) -> anyhow::Result<&Pin> {
    if stored.is_none() {
        if !input::has_tty() {
            return Err(anyhow!(
                "changing the vault through the broker needs the approval PIN: pass --pin-stdin (the PIN on its own line of stdin, after the passphrase line if --passphrase-stdin is given too)"
            ));
        }
        *stored = Some(input::prompt_pin(
            "Approval PIN (to change the vault): ",
            "--pin-stdin",
        )?);
    }
    stored
        .as_ref()
        .ok_or_else(|| anyhow!("internal: no approval PIN"))
}

/// Opens the backend for a vault command. With `--passphrase-stdin` the
/// first stdin line is the passphrase either way (so a script's stdin layout
/// does not depend on whether the broker runs).
pub fn open(global: &Global, secrets: &mut SecretInput) -> anyhow::Result<Backend> {
    let (passphrase, _) = stdin_lines(global, secrets, false)?;
    match broker()?.map(unlocked) {
        // Reading needs no proof: the passphrase line is not used.
        Some(Some(client)) => Ok(Backend::Broker(client, ChangeAuth::Pin(None))),
        Some(None) => open_direct(passphrase, true),
        None => open_direct(passphrase, false),
    }
}

/// The vault file, opened with the passphrase (read, or asked for);
/// `locked`: a locked broker runs (said when the passphrase cannot be asked).
fn open_direct(passphrase: Option<Passphrase>, locked: bool) -> anyhow::Result<Backend> {
    let path = vault_path()?;
    if !path.exists() {
        // Say so before asking for a passphrase that cannot help.
        return Err(VaultError::NotFound { path }.into());
    }
    let passphrase = match passphrase {
        Some(p) => p,
        None => input::prompt_passphrase("Vault passphrase: ", "--passphrase-stdin").map_err(|e| {
            if locked {
                anyhow!(
                    "the vault is locked: run `custody unlock` first, or pass --passphrase-stdin to read the vault file directly ({e:#})"
                )
            } else {
                e
            }
        })?,
    };
    Ok(Backend::Direct(Box::new(Direct {
        vault: Vault::unlock(&path, passphrase.expose())?,
        chain: None,
    })))
}

/// Who the audit log names for a change made on the vault file directly.
pub const DIRECT_BY: &str = "terminal (vault file, no broker)";

/// The audit log next to the vault, opened for `vault` (see
/// `custody_core::vault::audited::open_chain`). A running, unlocked broker
/// holds it: then the change must go through the broker, or wait for
/// `custody lock`.
pub fn open_audit(vault: &Vault) -> anyhow::Result<AuditChain> {
    let path = paths::home_dir()
        .map(|h| h.join(custody_core::audit::AUDIT_FILE))
        .context("cannot tell where the audit log lives: set CUSTODY_HOME")?;
    audited::open_chain(vault, &path).map_err(|e| match e {
        audited::OpenError::Audit(custody_core::audit::AuditError::Busy { .. }) => anyhow!(
            "the running broker holds the audit log: run `custody lock` first (the broker keeps running, locked), then try again; nothing was changed"
        ),
        e => anyhow!(
            "the audit log cannot be opened ({e}); nothing was changed: check it with `custody audit verify`"
        ),
    })
}

/// The vault file, opened with the passphrase; its audit log is opened at
/// the first change (reads need none), and every change goes through
/// `custody_core::vault::audited`, as the broker's do (G6).
pub struct Direct {
    vault: Vault,
    chain: Option<AuditChain>,
}

impl Direct {
    /// Makes the change `f` with its audit record, as one: a change that
    /// cannot be audited is not made.
    fn change<T>(
        &mut self,
        action: VaultAction,
        env: &EnvName,
        var: Option<&VarName>,
        f: impl FnOnce(&mut Vault) -> Result<T, VaultError>,
    ) -> anyhow::Result<T> {
        let chain = match &mut self.chain {
            Some(c) => c,
            None => self.chain.insert(open_audit(&self.vault)?),
        };
        let event = AuditEvent::VaultChange {
            action,
            environment: env.to_string(),
            variable: var.map(VarName::to_string),
            by: Some(DIRECT_BY.to_owned()),
        };
        let reason = |e: &VaultError| custody_broker::error::vault_code(e).to_owned();
        audited::change(&mut self.vault, chain, event, reason, f).map_err(|e| match e {
            ChangeError::Refused { error, recorded } => {
                if let Err(why) = recorded {
                    eprintln!("custody: warning: the refused change could not be audited: {why}");
                }
                error.into()
            }
            ChangeError::Audit(e) => {
                anyhow!("the audit log cannot be written ({e}); nothing was changed")
            }
            ChangeError::Head(e) => e.into(),
        })
    }
}

/// [`open`] for a command that changes the vault: with `pin_stdin`, the
/// line after the passphrase line (if any) is the approval PIN, read
/// whether or not the broker runs (so a script's stdin layout does not
/// depend on it); the direct path needs the passphrase instead.
pub fn open_to_change(
    global: &Global,
    secrets: &mut SecretInput,
    pin_stdin: bool,
) -> anyhow::Result<Backend> {
    let (passphrase, pin) = stdin_lines(global, secrets, pin_stdin)?;
    match broker()?.map(unlocked) {
        Some(Some(client)) => Ok(Backend::Broker(
            client,
            ChangeAuth::from_inputs(pin, passphrase)?,
        )),
        Some(None) => open_direct(passphrase, true),
        None => open_direct(passphrase, false),
    }
}

/// Opens the vault file itself (commands that must: `passwd`).
pub fn open_vault(global: &Global, secrets: &mut SecretInput) -> anyhow::Result<Vault> {
    open_vault_asking(global, secrets, "Vault passphrase: ")
}

/// [`open_vault`], asking with `prompt` on a terminal (`passwd` asks for
/// the *current* passphrase).
pub fn open_vault_asking(
    global: &Global,
    secrets: &mut SecretInput,
    prompt: &str,
) -> anyhow::Result<Vault> {
    let path = vault_path()?;
    if !path.exists() {
        return Err(VaultError::NotFound { path }.into());
    }
    let passphrase = if global.passphrase_stdin {
        secrets.passphrase()?
    } else {
        input::prompt_passphrase(prompt, "--passphrase-stdin")?
    };
    Ok(Vault::unlock(&path, passphrase.expose())?)
}

/// The current passphrase, from stdin or the terminal.
pub fn read_passphrase(global: &Global, secrets: &mut SecretInput) -> anyhow::Result<Passphrase> {
    if global.passphrase_stdin {
        secrets.passphrase()
    } else {
        input::prompt_passphrase("Vault passphrase: ", "--passphrase-stdin")
    }
}

fn parse<T: DeserializeOwned>(v: Value) -> anyhow::Result<T> {
    serde_json::from_value(v).context("unexpected answer from the broker")
}

impl Backend {
    fn call(&mut self, req: Request) -> anyhow::Result<Value> {
        match self {
            Backend::Broker(c, _) => c.call(req).map_err(broker_err),
            Backend::Direct(_) => Err(anyhow!("internal: broker call on a direct backend")),
        }
    }

    /// A change through the broker: the PIN proven, `secret` sealed.
    fn change(&mut self, req: Request, secret: Option<&[u8]>) -> anyhow::Result<Value> {
        match self {
            Backend::Broker(c, auth) => auth.call(c, req, secret),
            Backend::Direct(_) => Err(anyhow!("internal: broker call on a direct backend")),
        }
    }

    pub fn create_environment(&mut self, env: &EnvName, description: &str) -> anyhow::Result<()> {
        match self {
            Backend::Direct(d) => d.change(VaultAction::CreateEnvironment, env, None, |v| {
                v.create_environment(env, description)
            }),
            Backend::Broker(..) => self
                .change(
                    Request::EnvCreate {
                        name: env.to_string(),
                        description: description.to_owned(),
                    },
                    None,
                )
                .map(|_| ()),
        }
    }

    pub fn environments(&mut self) -> anyhow::Result<Vec<EnvironmentInfo>> {
        match self {
            Backend::Direct(d) => Ok(d.vault.environments()?),
            Backend::Broker(..) => parse(self.call(Request::EnvList)?),
        }
    }

    pub fn environment(&mut self, env: &EnvName) -> anyhow::Result<EnvironmentInfo> {
        match self {
            Backend::Direct(d) => Ok(d.vault.environment(env)?),
            Backend::Broker(..) => {
                let mut v = self.call(Request::EnvDescribe {
                    name: env.to_string(),
                    description: None,
                })?;
                parse(v["environment"].take())
            }
        }
    }

    pub fn describe_environment(&mut self, env: &EnvName, description: &str) -> anyhow::Result<()> {
        match self {
            Backend::Direct(d) => d.change(VaultAction::DescribeEnvironment, env, None, |v| {
                v.describe_environment(env, description)
            }),
            Backend::Broker(..) => self
                .change(
                    Request::EnvDescribe {
                        name: env.to_string(),
                        description: Some(description.to_owned()),
                    },
                    None,
                )
                .map(|_| ()),
        }
    }

    pub fn remove_environment(&mut self, env: &EnvName) -> anyhow::Result<usize> {
        match self {
            Backend::Direct(d) => d.change(VaultAction::RemoveEnvironment, env, None, |v| {
                v.remove_environment(env)
            }),
            Backend::Broker(..) => {
                let v = self.change(
                    Request::EnvRemove {
                        name: env.to_string(),
                    },
                    None,
                )?;
                Ok(v["variables"].as_u64().unwrap_or(0) as usize)
            }
        }
    }

    pub fn variables(&mut self, env: &EnvName) -> anyhow::Result<Vec<VariableInfo>> {
        match self {
            Backend::Direct(d) => Ok(d.vault.variables(env)?),
            Backend::Broker(..) => {
                let mut v = self.call(Request::EnvDescribe {
                    name: env.to_string(),
                    description: None,
                })?;
                parse(v["variables"].take())
            }
        }
    }

    pub fn set_variable(
        &mut self,
        env: &EnvName,
        var: &VarName,
        value: &[u8],
        update: &VariableUpdate,
    ) -> anyhow::Result<bool> {
        match self {
            Backend::Direct(d) => d.change(VaultAction::SetVariable, env, Some(var), |v| {
                v.set_variable(env, var, value, update)
            }),
            Backend::Broker(..) => {
                let req = Request::Set {
                    env: env.to_string(),
                    var: var.to_string(),
                    description: update.description.clone(),
                    kind: update.kind,
                    bindings: update.bindings.clone(),
                };
                let v = self.change(req, Some(value))?;
                Ok(v["created"].as_bool().unwrap_or(false))
            }
        }
    }

    /// Replaces an existing variable's bindings (an empty list unbinds).
    pub fn bind_variable(
        &mut self,
        env: &EnvName,
        var: &VarName,
        rules: &[custody_core::bound::Rule],
    ) -> anyhow::Result<()> {
        match self {
            Backend::Direct(d) => {
                if !d
                    .vault
                    .variables(env)?
                    .iter()
                    .any(|x| x.name == var.as_str())
                {
                    anyhow::bail!("no variable '{env}/{var}'");
                }
                let update = VariableUpdate {
                    bindings: Some(rules.to_vec()),
                    ..VariableUpdate::default()
                };
                d.change(VaultAction::BindVariable, env, Some(var), |v| {
                    v.declare_variable(env, var, &update).map(drop)
                })
            }
            Backend::Broker(..) => {
                let req = Request::Bind {
                    env: env.to_string(),
                    var: var.to_string(),
                    bindings: rules.to_vec(),
                };
                self.change(req, None).map(drop)
            }
        }
    }

    /// Stores a random value; through the broker it is generated there and
    /// never exists in this process.
    pub fn generate(
        &mut self,
        env: &EnvName,
        var: &VarName,
        length: usize,
        alphabet: custody_core::generate::Alphabet,
        update: &VariableUpdate,
    ) -> anyhow::Result<bool> {
        match self {
            Backend::Direct(d) => {
                let value = custody_core::generate::random_value(length, alphabet)?;
                d.change(VaultAction::GenerateVariable, env, Some(var), |v| {
                    v.set_variable(env, var, &value, update)
                })
            }
            Backend::Broker(..) => {
                let v = self.change(
                    Request::Generate {
                        env: env.to_string(),
                        var: var.to_string(),
                        length,
                        alphabet,
                        description: update.description.clone(),
                        kind: update.kind,
                    },
                    None,
                )?;
                Ok(v["created"].as_bool().unwrap_or(false))
            }
        }
    }

    pub fn unset_variable(&mut self, env: &EnvName, var: &VarName) -> anyhow::Result<()> {
        match self {
            Backend::Direct(d) => d.change(VaultAction::RemoveVariable, env, Some(var), |v| {
                v.unset_variable(env, var)
            }),
            Backend::Broker(..) => self
                .change(
                    Request::Unset {
                        env: env.to_string(),
                        var: var.to_string(),
                    },
                    None,
                )
                .map(|_| ()),
        }
    }

    /// Imports a dotenv file's bytes.
    pub fn import(
        &mut self,
        env: &EnvName,
        text: &[u8],
        progress: &mut dyn FnMut(usize, usize),
    ) -> anyhow::Result<ImportOutcome> {
        match self {
            Backend::Direct(d) => d.change(VaultAction::Import, env, None, |v| {
                custody_core::import::import_dotenv(v, env, text, progress)
            }),
            Backend::Broker(..) => {
                if text.len() > custody_broker::protocol::MAX_FRAME - 64 {
                    return Err(anyhow!(
                        "the file is larger than {} bytes, the most the broker takes in one import: split it, or stop the broker (`custody lock` keeps it running; stop the daemon) and import directly",
                        custody_broker::protocol::MAX_FRAME
                    ));
                }
                let v = self.change(
                    Request::Import {
                        env: env.to_string(),
                    },
                    Some(text),
                )?;
                parse(v)
            }
        }
    }
}
