//! `airlock mcp`: an MCP server on stdin/stdout, for agents that start their tools
//! as child processes. Its `run_python_code` tool answers like mcp-run-python's.

use std::time::Duration;

use airlock_server::mcp::ReturnMode;
use anyhow::Context;

use super::serve::{ServiceArgs, settings, start_service};

/// Arguments of `airlock mcp`.
#[derive(clap::Args, Debug)]
pub struct McpArgs {
    #[command(flatten)]
    common: ServiceArgs,
    /// How `run_python_code` results are rendered: xml (as mcp-run-python) or json.
    #[arg(long = "return-mode", default_value = "xml", value_parser = |s: &str| s.parse::<ReturnMode>())]
    return_mode: ReturnMode,
}

/// Runs `airlock mcp`.
pub fn main(a: McpArgs) -> anyhow::Result<i32> {
    let s = settings(&a.common)?;
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the runtime")?;
    rt.block_on(async move {
        let service = start_service(&a.common, s).await?;
        let served = airlock_server::mcp::serve_stdio(service.clone(), a.return_mode).await;
        // The client is gone (or the transport failed): destroy every sandbox.
        service.shutdown(Duration::from_secs(5)).await;
        served.map_err(|e| anyhow::anyhow!(e))
    })?;
    Ok(0)
}
