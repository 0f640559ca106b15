//! The vault tools: environments and variable names (never values), new
//! environments, declared slots, generated secrets.

use super::*;

#[tool_router(router = vault_tools, vis = "pub(super)")]
impl CustodyMcp {
    /// Environments with their descriptions and variables (name, kind,
    /// description, whether a value is set). Never a value.
    #[tool(
        name = "list_environments",
        output_schema = schema_for_output::<EnvironmentList>(),
        annotations(title = "List environments", read_only_hint = true, open_world_hint = false)
    )]
    async fn list_environments(
        &self,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, ErrorData> {
        self.note_client(&ctx);
        // One request: the broker answers with exactly these views, read
        // straight into them.
        let r: Result<EnvironmentList, LinkError> = async {
            let mut conn = self.inner.link.connect().await?;
            let environments = conn.call_as(Request::Catalog).await?;
            Ok(EnvironmentList { environments })
        }
        .await;
        match r {
            Ok(list) => {
                let mut t = format!("{} environment(s)", list.environments.len());
                for e in &list.environments {
                    let vars: Vec<String> = e
                        .variables
                        .iter()
                        .map(|v| format!("{}{}", v.name, if v.is_set { "" } else { " (not set)" }))
                        .collect();
                    t.push_str(&format!(
                        "\n- {}{}: {} [{}]",
                        e.name,
                        if e.always_approve {
                            " (always asks)"
                        } else {
                            ""
                        },
                        e.description,
                        vars.join(", ")
                    ));
                }
                ok(&list, t)
            }
            Err(e) => fail(&e),
        }
    }

    /// Create an environment (audited). Environments that policy protects
    /// are refused: ask the user.
    #[tool(
        name = "create_environment",
        output_schema = schema_for_output::<VaultChange>(),
        annotations(
            title = "Create environment",
            read_only_hint = false,
            destructive_hint = false,
            idempotent_hint = false,
            open_world_hint = false
        )
    )]
    async fn create_environment(
        &self,
        Parameters(a): Parameters<CreateEnvironmentArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, ErrorData> {
        self.note_client(&ctx);
        let message = format!(
            "created environment '{}'; add slots with declare_variable",
            a.name
        );
        let req = Request::EnvCreate {
            name: a.name.clone(),
            description: a.description,
        };
        // The broker answers `{"created": NAME}`: success means created.
        self.vault_change(req, a.name, None, true, message).await
    }

    /// Declare an empty variable slot with a description; the user fills
    /// the value out of band with `custody set ENV VAR`.
    #[tool(
        name = "declare_variable",
        output_schema = schema_for_output::<VaultChange>(),
        annotations(
            title = "Declare variable",
            read_only_hint = false,
            destructive_hint = false,
            idempotent_hint = true,
            open_world_hint = false
        )
    )]
    async fn declare_variable(
        &self,
        Parameters(a): Parameters<DeclareVariableArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, ErrorData> {
        self.note_client(&ctx);
        let message = format!(
            "declared '{}/{}'; ask the user to fill it with `custody set {} {}`",
            a.environment, a.name, a.environment, a.name
        );
        let req = Request::Declare {
            env: a.environment.clone(),
            var: a.name.clone(),
            description: a.description,
            kind: a.kind.map(Into::into),
            source: None,
        };
        self.vault_change(req, a.environment, Some(a.name), false, message)
            .await
    }

    /// Store a random value that nobody sees (not even you) in a variable
    /// that has no value yet.
    #[tool(
        name = "generate_secret",
        output_schema = schema_for_output::<VaultChange>(),
        annotations(
            title = "Generate secret",
            read_only_hint = false,
            destructive_hint = false,
            idempotent_hint = false,
            open_world_hint = false
        )
    )]
    async fn generate_secret(
        &self,
        Parameters(a): Parameters<GenerateSecretArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, ErrorData> {
        self.note_client(&ctx);
        let length = a.length.unwrap_or(32);
        let alphabet = a.alphabet.unwrap_or_default();
        let message = format!(
            "stored a random {length}-character value in '{}/{}'; use it through run",
            a.environment, a.name
        );
        let req = Request::Generate {
            env: a.environment.clone(),
            var: a.name.clone(),
            length,
            alphabet: alphabet.into(),
            description: a.description,
            kind: a.kind.map(Into::into),
        };
        self.vault_change(req, a.environment, Some(a.name), false, message)
            .await
    }
}
