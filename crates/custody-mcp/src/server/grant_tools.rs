//! The grant and audit tools: grants the agent holds, giving one back, and
//! the tail of the audit log.

use super::*;

#[tool_router(router = grant_tools, vis = "pub(super)")]
impl CustodyMcp {
    /// This session's grants in force (exact argv, cwd, environments,
    /// expiry, uses left).
    #[tool(
        name = "list_grants",
        output_schema = schema_for_output::<GrantList>(),
        annotations(title = "List grants", read_only_hint = true, open_world_hint = false)
    )]
    async fn list_grants(
        &self,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, ErrorData> {
        self.note_client(&ctx);
        let r = async {
            let v = self.inner.link.call(Request::Grants).await?;
            from::<Vec<GrantView>>(v)
        }
        .await;
        match r {
            Ok(grants) => {
                let mut t = format!("{} grant(s)", grants.len());
                for g in &grants {
                    t.push_str(&format!(
                        "\n- {} until {}: {}",
                        g.grant_id,
                        g.expires_at,
                        g.argv.join(" ")
                    ));
                }
                ok(&GrantList { grants }, t)
            }
            Err(e) => fail(&e),
        }
    }

    /// Give up one of this session's grants (`g-…`); its running processes
    /// are killed. A lease id (`l-…`) kills just that process.
    #[tool(
        name = "revoke_grant",
        output_schema = schema_for_output::<Revoked>(),
        annotations(
            title = "Revoke grant",
            read_only_hint = false,
            destructive_hint = true,
            idempotent_hint = true,
            open_world_hint = false
        )
    )]
    async fn revoke_grant(
        &self,
        Parameters(a): Parameters<RevokeGrantArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, ErrorData> {
        self.note_client(&ctx);
        let target = if a.grant_id.starts_with("l-") {
            RevokeTarget::Lease(a.grant_id)
        } else {
            RevokeTarget::Grant(a.grant_id)
        };
        let r = async {
            let v = self.inner.link.call(Request::Revoke(target)).await?;
            from::<Revoked>(v)
        }
        .await;
        match r {
            Ok(rv) => {
                let t = format!(
                    "revoked {} grant(s), killed {} lease(s)",
                    rv.revoked_grants.len(),
                    rv.revoked_leases.len()
                );
                ok(&rv, t)
            }
            Err(e) => fail(&e),
        }
    }

    /// This session's recent audit records: its requests, approvals,
    /// denials, grants, leases and revocations (names and ids only).
    #[tool(
        name = "audit_tail",
        output_schema = schema_for_output::<AuditTail>(),
        annotations(title = "Audit tail", read_only_hint = true, open_world_hint = false)
    )]
    async fn audit_tail(
        &self,
        Parameters(a): Parameters<AuditTailArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, ErrorData> {
        self.note_client(&ctx);
        let limit = a.limit.unwrap_or(50);
        let r = async {
            let v = self.inner.link.call(Request::AuditTail { limit }).await?;
            from::<Vec<AuditEntry>>(v)
        }
        .await;
        match r {
            Ok(records) => {
                let mut t = format!("{} record(s)", records.len());
                for rec in &records {
                    t.push_str(&format!(
                        "\n{} {} {}",
                        rec.seq,
                        rec.time,
                        rec.event.get("type").and_then(Value::as_str).unwrap_or("?")
                    ));
                }
                ok(&AuditTail { records }, t)
            }
            Err(e) => fail(&e),
        }
    }
}
