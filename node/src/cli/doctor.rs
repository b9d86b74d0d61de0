//! `netsky doctor`: every check ok / warn / fail with its fix; exit 1 on any fail.

use std::process::ExitCode;

use anyhow::Result;
use clap::Args;

use crate::output::{Ctx, emit};

/// Arguments of `netsky doctor`.
#[derive(Debug, Args)]
pub struct DoctorArgs {}

/// Runs `netsky doctor`.
pub fn run(ctx: &Ctx, _a: DoctorArgs) -> Result<ExitCode> {
    let report = crate::doctor::examine(&ctx.home);
    emit(ctx, &report, || report.text())?;
    Ok(if report.failed > 0 { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}
