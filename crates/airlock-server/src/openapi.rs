//! The OpenAPI document (`GET /openapi.json`), generated from the handlers and types.

use utoipa::OpenApi;

use crate::api;

/// The OpenAPI document of the HTTP API.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "airlock",
        description = "Run untrusted, model-written code in sandboxes: one-shot executions, stateful sessions, files, streaming, and an audit log. Errors are `{\"error\": {\"code\", \"message\"}}`. Send `Authorization: Bearer <key>` when the server requires keys."
    ),
    paths(
        api::health,
        api::metrics,
        api::execute,
        api::create_sandbox,
        api::list_sandboxes,
        api::get_sandbox,
        api::delete_sandbox,
        api::execute_cell,
        api::list_files,
        api::put_file,
        api::get_file,
        api::delete_file,
        api::list_executions,
        api::get_execution,
        api::list_templates,
    ),
    components(schemas(
        airlock_core::ExecRequest,
        airlock_core::CellRequest,
        airlock_core::Outcome,
        airlock_core::FileEntry,
        airlock_service::session::CreateSandbox,
        airlock_service::session::SandboxInfo,
        airlock_service::store::ExecutionRecord,
        airlock_service::store::ExecutionPage,
        crate::stream::StreamEvent,
        crate::error::ErrorBody,
        api::SandboxList,
        api::FileList,
        api::TemplateList,
    )),
    modifiers(&BearerAuth),
    tags(
        (name = "executions", description = "One-shot runs and the audit log"),
        (name = "sandboxes", description = "Stateful sandboxes (sessions) and their cells"),
        (name = "files", description = "Files in a sandbox's workspace"),
        (name = "service", description = "Health and metrics"),
    )
)]
pub struct ApiDoc;

/// Declares the bearer-key scheme.
struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "api_key",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).bearer_format("ak_...").build()),
        );
        doc.security = Some(vec![SecurityRequirement::new("api_key", Vec::<String>::new())]);
    }
}
