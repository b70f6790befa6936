//! `audctl verify`: re-verify an export of the Audit Trail service offline, trusting neither the
//! server nor its database. Every link of the hash chain is recomputed (RFC 8785 canonical form,
//! `audit_api::canonical`); with a signed checkpoint and the server's public key, the checkpoint's
//! Ed25519 signature is checked and the export must contain its head, so a tail cut, a rollback or
//! a restore of an old backup shows even when the database's own chain head was moved to match.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use audit_api::checkpoint::{self, ExportVerifier, SignedCheckpoint};
use audit_api::strict::Strict;
use comfy_table::Table;
use serde::Serialize;

use crate::cli::{OutputFormat, VerifyArgs};
use crate::error::{CheckFailed, usage};
use crate::output::{self, Report};

/// What was verified and how it went.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct VerifyReport {
    pub export: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tenant_id: Option<String>,
    #[serde(flatten)]
    pub result: checkpoint::ExportReport,
    /// The line of the export holding the first broken event (None: intact, or broken past the
    /// last line, as a cut tail is).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub broken_at_line: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub checkpoint: Option<CheckpointSummary>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CheckpointSummary {
    pub sequence: i64,
    pub hash: String,
    pub issued_at: String,
    pub key_id: String,
    /// The signature verified with the public key given.
    pub signature_valid: bool,
}

impl Report for VerifyReport {
    fn table(&self) -> Table {
        let mut t = output::new_table(["", "verification"]);
        t.add_row(["export".to_owned(), self.export.clone()]);
        if let Some(tenant) = &self.tenant_id {
            t.add_row(["tenant".to_owned(), tenant.clone()]);
        }
        t.add_row(["result".to_owned(), if self.result.verified { "VERIFIED" } else { "BROKEN" }.to_owned()]);
        t.add_row(["links checked".to_owned(), self.result.checked.to_string()]);
        if let Some(at) = self.result.broken_at {
            let line = self.broken_at_line.map(|l| format!(" (line {l})")).unwrap_or_default();
            t.add_row(["first broken at".to_owned(), format!("sequence {at}{line}")]);
        }
        if let Some(reason) = &self.result.reason {
            t.add_row(["reason".to_owned(), reason.clone()]);
        }
        if let Some(cp) = &self.checkpoint {
            t.add_row([
                "checkpoint signature".to_owned(),
                if cp.signature_valid { "valid" } else { "INVALID" }.to_owned(),
            ]);
            t.add_row([
                "checkpoint".to_owned(),
                format!("sequence {} of {} (key {})", cp.sequence, cp.issued_at, cp.key_id),
            ]);
            let matched = self.result.checkpoint_matched.unwrap_or(false);
            t.add_row(["checkpoint head in export".to_owned(), if matched { "yes" } else { "no" }.to_owned()]);
        }
        t
    }
}

pub fn run(args: &VerifyArgs, format: OutputFormat) -> anyhow::Result<()> {
    let (checkpoint, bad_signature) = match (&args.checkpoint, &args.public_key) {
        (Some(cp), Some(key)) => {
            let (cp, signature) = load_checkpoint(cp, key)?;
            (Some(cp), signature.err())
        }
        (None, None) => (None, None),
        _ => return Err(usage("--checkpoint and --public-key go together: an unchecked checkpoint proves nothing")),
    };
    let shown = args.export.display().to_string();
    let input: Box<dyn Read> = if args.export == Path::new("-") {
        Box::new(std::io::stdin())
    } else {
        if args.export.is_dir() {
            return Err(usage(format!("the export {shown} is a directory: give the NDJSON file")));
        }
        Box::new(std::fs::File::open(&args.export).map_err(|e| usage(format!("cannot read the export {shown}: {e}")))?)
    };
    let mut verifier = ExportVerifier::new(checkpoint.as_ref());
    let mut tenant = checkpoint.as_ref().map(|c| c.tenant_id.clone());
    let mut events = 0usize;
    let mut broken_line = None;
    for (i, line) in BufReader::new(input).lines().enumerate() {
        // Unreadable input is the operator's to fix (exit 2), not a broken chain (exit 1).
        let line = line.map_err(|e| usage(format!("{shown}:{}: cannot read the export: {e}", i + 1)))?;
        // A byte order mark, as an editor may add on saving: RFC 8259 lets a parser ignore it, and
        // the hash covers the parsed event, not the file's bytes.
        let line = if i == 0 { line.strip_prefix('\u{feff}').unwrap_or(&line) } else { &line };
        if line.trim().is_empty() {
            continue;
        }
        let event = match serde_json::from_str::<Strict>(line) {
            Ok(Strict(event)) => event,
            // A repeated key is valid JSON that no server wrote: the hash covers only the value the
            // parser keeps, and a reader keeping the other sees what was never stored. Tampering.
            Err(e) if e.classify() == serde_json::error::Category::Data => {
                verifier.reject(format!("line {}: {e}: the hash covers only one of its values", i + 1));
                events += 1;
                broken_line = Some(i + 1);
                break;
            }
            Err(e) => return Err(usage(format!("{shown}:{}: not JSON ({e}): is this an NDJSON export?", i + 1))),
        };
        if !event.is_object() {
            return Err(usage(format!("{shown}:{}: not an event (a JSON object is expected, found {event})", i + 1)));
        }
        if tenant.is_none() {
            tenant = event["metadata"]["tenantId"].as_str().map(str::to_owned);
        }
        verifier.check(&event);
        events += 1;
        if verifier.is_broken() {
            broken_line = Some(i + 1);
            break;
        }
    }
    // Zero links verify trivially, which proves nothing: without a checkpoint an empty export is
    // an input error. With one, the verifier fails it (the checkpoint's head is missing: exit 1).
    if events == 0 && checkpoint.is_none() {
        return Err(usage(format!(
            "the export {shown} holds no events: nothing to verify (wrong tenant, or an empty export?)"
        )));
    }
    let mut result = verifier.finish();
    if let Some(reason) = &bad_signature {
        // A checkpoint that does not verify proves nothing, whatever the chain says.
        broken_line = None;
        result.verified = false;
        result.broken_at = None;
        result.reason = Some(reason.clone());
        result.checkpoint_matched = Some(false);
    }
    let report = VerifyReport {
        export: args.export.display().to_string(),
        tenant_id: tenant,
        broken_at_line: broken_line,
        checkpoint: checkpoint.map(|c| CheckpointSummary {
            sequence: c.sequence,
            hash: c.hash,
            issued_at: c.issued_at,
            key_id: c.key_id,
            signature_valid: bad_signature.is_none(),
        }),
        result,
    };
    output::emit(format, &report)?;
    if report.result.verified {
        Ok(())
    } else {
        let at = match (report.result.broken_at, report.broken_at_line) {
            (Some(s), Some(line)) => format!(" at sequence {s} ({shown}:{line})"),
            (Some(s), None) => format!(" at sequence {s}"),
            _ => String::new(),
        };
        Err(CheckFailed(format!(
            "the export does not verify{at}: {}",
            report.result.reason.as_deref().unwrap_or("broken")
        ))
        .into())
    }
}

/// Read a checkpoint (one object, the answer of `GET /integrity/checkpoints` holding exactly one,
/// or an append's receipt, whose `checkpoint` member is one) and check its signature (a bad one fails the verification, exit 1, not the command).
fn load_checkpoint(path: &PathBuf, key_path: &PathBuf) -> anyhow::Result<(SignedCheckpoint, Result<(), String>)> {
    let text = std::fs::read_to_string(path).map_err(|e| usage(format!("cannot read {}: {e}", path.display())))?;
    let value: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| usage(format!("{} is not JSON: {e}", path.display())))?;
    let value = match value.get("checkpoints").and_then(|c| c.as_array()) {
        Some(list) if list.len() == 1 => list[0].clone(),
        Some(list) => {
            return Err(usage(format!(
                "{} holds {} checkpoints; give the one of the exported tenant",
                path.display(),
                list.len()
            )));
        }
        // A receipt: the answer to an append, the checkpoint of its tenant's head at that event.
        None => match value.get("checkpoint") {
            Some(cp) if cp.is_object() => cp.clone(),
            _ => value,
        },
    };
    if value.get("status").is_some() && value.get("signature").is_none() {
        return Err(usage(format!(
            "{}: an append's receipt without a checkpoint: append with `?signed=true` for a signed receipt, \
             or give a checkpoint from GET /api/v1/integrity/checkpoints",
            path.display()
        )));
    }
    let cp: SignedCheckpoint = serde_json::from_value(value).map_err(|e| {
        usage(format!(
            "{}: not a signed checkpoint ({{tenantId, sequence, hash, issuedAt, keyId, signature}}): {e}",
            path.display()
        ))
    })?;
    let key_text =
        std::fs::read_to_string(key_path).map_err(|e| usage(format!("cannot read {}: {e}", key_path.display())))?;
    let key = checkpoint::parse_public_key(&key_text).map_err(|e| usage(format!("{}: {e}", key_path.display())))?;
    let signature = cp.verify_signature(&key).map_err(|e| format!("{}: {e}", path.display()));
    Ok((cp, signature))
}
