//! The audit service as smoke and load reach it: URL, API key and trusted CA, from the flags, the
//! environment and the targets file. The key is held as a plain string only here and is never printed.

use std::path::Path;

use anyhow::Context;
use audctl_targets::Targets;

use crate::cli::{GlobalArgs, ServiceArgs};
use crate::error::usage;

/// Environment variable read for the API key when no file is given.
pub const API_KEY_ENV: &str = "AUDIT_API_KEY";

pub struct Service {
    pub url: String,
    key: Option<String>,
    pub ca_pem: Option<Vec<u8>>,
    pub tenant: Option<String>,
}

impl std::fmt::Debug for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Service")
            .field("url", &self.url)
            .field("key", &self.key.as_ref().map(|_| "***"))
            .field("tenant", &self.tenant)
            .finish()
    }
}

impl Service {
    pub fn key(&self) -> Option<&str> {
        self.key.as_deref()
    }
}

/// The targets file of `--targets`, when given.
pub fn targets(global: &GlobalArgs) -> anyhow::Result<Option<Targets>> {
    match &global.targets {
        Some(path) => Ok(Some(Targets::load(path).map_err(|e| usage(format!("--targets: {e}")))?)),
        None => Ok(None),
    }
}

/// Resolve the service; `fallback_url` (e.g. the ingress host of the values) is used last.
pub fn resolve(args: &ServiceArgs, targets: Option<&Targets>, fallback_url: Option<String>) -> anyhow::Result<Service> {
    let audit = targets.and_then(|t| t.audit.as_ref());
    let url = args.url.clone().or_else(|| audit.map(|a| a.url.clone())).or(fallback_url).ok_or_else(|| {
        usage("no service URL: pass --url, or set audit.url in the --targets file, or an ingress host in the values")
    })?;
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err(usage(format!("service URL {url:?}: expected http:// or https://")));
    }
    let key = match (&args.api_key_file, std::env::var(API_KEY_ENV).ok().filter(|k| !k.is_empty())) {
        (Some(file), _) => Some(read_key(file)?),
        (None, Some(k)) => Some(k),
        (None, None) => match audit.and_then(|a| a.api_key.as_ref()) {
            Some(secret) => Some(secret.expose().map_err(|e| usage(format!("targets audit.apiKey: {e}")))?),
            None => None,
        },
    };
    let ca_pem = match &args.ca {
        Some(path) => Some(std::fs::read(path).map_err(|e| usage(format!("--ca {}: {e}", path.display())))?),
        None => None,
    };
    let tenant = args.tenant.clone().or_else(|| audit.and_then(|a| a.tenant.clone()));
    Ok(Service { url, key, ca_pem, tenant })
}

fn read_key(file: &Path) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(file)
        .with_context(|| format!("--api-key-file {}", file.display()))
        .map_err(|e| usage(crate::error::chain(&e).to_string()))?;
    let key = text.trim().to_owned();
    if key.is_empty() {
        return Err(usage(format!("--api-key-file {}: the file is empty", file.display())));
    }
    Ok(key)
}

/// The URL fit for reports: any `user:password@` removed, secret query parameters masked.
pub fn display_url(url: &str) -> String {
    let without_userinfo = match (url.find("://"), url.find('@')) {
        (Some(s), Some(at)) if at > s && !url[s + 3..at].contains('/') => {
            format!("{}{}", &url[..s + 3], &url[at + 1..])
        }
        _ => url.to_owned(),
    };
    // Secret-looking query parameters (token=, apiKey=...) too; otherwise the URL as given (not
    // re-serialised: reports show what the operator typed).
    let secret_query = url::Url::parse(&without_userinfo)
        .is_ok_and(|u| u.query_pairs().any(|(k, _)| audctl_targets::is_secret_param(&k)));
    if secret_query { audctl_targets::redact_url(&without_userinfo) } else { without_userinfo }
}
