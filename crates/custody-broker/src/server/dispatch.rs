//! One request, answered: the exhaustive dispatch of everything that is not
//! streamed or handled by the connection itself.

use super::*;

use crate::Error;

pub(super) fn secret_required(
    secret: Option<Zeroizing<Vec<u8>>>,
    what: &str,
) -> Result<Zeroizing<Vec<u8>>, Error> {
    secret.ok_or_else(|| Error::BadRequest(format!("{what} must be sent in a secret frame")))
}

pub(super) async fn dispatch(
    broker: &Arc<Broker>,
    peer: &mut Peer,
    req: Request,
    secret: Option<Zeroizing<Vec<u8>>>,
    verified: Option<crate::broker::pin::PinVerified>,
) -> Result<Value, Error> {
    use crate::ops;
    match req {
        Request::Hello { .. } => Err(Error::BadRequest("hello was already sent".into())),
        Request::Status => protocol::answer(broker.status()),
        Request::Unlock => broker
            .unlock(custody_core::secret::Passphrase::new(secret_required(
                secret,
                "the passphrase",
            )?))
            .await
            .and_then(protocol::answer),
        Request::Lock => {
            protocol::answer(broker.lock(custody_core::audit::LockReason::Manual).await)
        }
        Request::RegisterSession {
            client_name,
            client_version,
            parent_pid,
            ..
        } => broker
            .register_session(peer, &client_name, &client_version, parent_pid)
            .and_then(protocol::answer),
        Request::AgentLaunch {
            name,
            sandboxed,
            enforced,
        } => broker
            .register_launcher(peer, &name, sandboxed, enforced)
            .and_then(protocol::answer),
        Request::Approve { request_id, scope } => broker
            .approve(peer, &request_id, scope, verified)
            .await
            .and_then(protocol::answer),
        Request::Deny { request_id } => broker.deny(peer, &request_id).and_then(protocol::answer),
        Request::PolicyShow => broker
            .policy_show(&broker.requester(peer))
            .and_then(protocol::answer),
        Request::PolicyApply { text } => broker
            .policy_apply(peer, text, verified)
            .await
            .and_then(protocol::answer),
        Request::PinChallenge
        | Request::PinExchange { .. }
        | Request::KeyChallenge
        | Request::PinAbort => Err(Error::BadRequest(
            "PIN exchanges are handled by the connection".into(),
        )),
        Request::Pending => {
            let me = broker.requester(peer);
            let only = matches!(me, crate::grants::Requester::Agent { .. }).then_some(&me);
            Ok(broker.pending(only))
        }
        Request::RequestStatus { request_id } => broker
            .request_status(&request_id)
            .and_then(protocol::answer),
        Request::Cancel { request_id } => broker
            .cancel(&request_id, &broker.requester(peer))
            .and_then(protocol::answer),
        Request::Grants => {
            let me = broker.requester(peer);
            let only = matches!(me, crate::grants::Requester::Agent { .. }).then_some(&me);
            protocol::answer(broker.grants(only))
        }
        Request::Leases => protocol::answer(broker.leases()),
        Request::Revoke(target) => {
            let me = broker.requester(peer);
            let only = matches!(me, crate::grants::Requester::Agent { .. }).then_some(&me);
            broker
                .revoke(&target, &me.describe(), only)
                .and_then(protocol::answer)
        }
        Request::AuditVerify => broker.audit_verify().and_then(protocol::answer),
        Request::Scan {
            path,
            git_history,
            staged,
            index_file,
            ..
        } => {
            let staged = staged.then(|| index_file.map(std::path::PathBuf::from));
            crate::scan_request::handle(broker, peer, path, git_history, staged, None).await
        }
        Request::Run(_) | Request::Watch | Request::Catalog => {
            Err(Error::Internal("handled by the connection".into()))
        }
        Request::RunInput { .. } | Request::RunResize(_) => Err(Error::BadRequest(
            "run_input and run_resize are sent only during a run on a terminal".into(),
        )),
        vault @ (Request::EnvCreate { .. }
        | Request::EnvList
        | Request::EnvDescribe { .. }
        | Request::EnvRemove { .. }
        | Request::Set { .. }
        | Request::Bind { .. }
        | Request::Declare { .. }
        | Request::Generate { .. }
        | Request::SourceAdd { .. }
        | Request::SourceList
        | Request::SourceRemove { .. }
        | Request::Unset { .. }
        | Request::List { .. }
        | Request::Import { .. }
        | Request::AuditTail { .. }) => ops::vault_request(broker, peer, vault, secret, verified),
    }
}
