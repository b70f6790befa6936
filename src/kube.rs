//! The Kubernetes client every cluster-facing verb uses.
//!
//! Precedence, kubectl's: `--kubeconfig`/`--context` flags, then the `kube` entry of the targets file,
//! then $KUBECONFIG / ~/.kube/config, then the in-cluster service account. Building the client does
//! not touch the network; the first request does, and [`transport_error`] turns its failure into the
//! typed `Unreachable` error (exit 3) so "cluster down" is never confused with "check failed".

use std::path::PathBuf;

use anyhow::Context;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};

use crate::cli::GlobalArgs;
use crate::error::{Unreachable, usage};

/// Where the cluster settings come from, resolved from flags and the targets file.
#[derive(Debug, Clone, Default)]
pub struct KubeSettings {
    pub kubeconfig: Option<PathBuf>,
    pub context: Option<String>,
}

impl KubeSettings {
    /// Flags win over the targets file's `kube` entry.
    pub fn resolve(global: &GlobalArgs, targets: Option<&audctl_targets::Targets>) -> Self {
        let from_targets = targets.and_then(|t| t.kube.clone()).unwrap_or_default();
        KubeSettings {
            kubeconfig: global.kubeconfig.clone().or(from_targets.kubeconfig),
            context: global.context.clone().or(from_targets.context),
        }
    }

    /// Whether anything names a cluster (flags, targets, $KUBECONFIG, ~/.kube/config or in-cluster).
    /// Verbs that only *optionally* write evidence use this to stay quiet on a laptop without a cluster.
    pub fn configured(&self) -> bool {
        self.kubeconfig.is_some()
            || self.context.is_some()
            || std::env::var_os("KUBECONFIG").is_some()
            || home_kubeconfig().is_some_and(|p| p.exists())
            || std::env::var_os("KUBERNETES_SERVICE_HOST").is_some()
    }

    /// The client. Errors here are configuration errors (exit 2): a missing or malformed kubeconfig,
    /// an unknown context.
    pub async fn client(&self) -> anyhow::Result<Client> {
        Ok(self.client_at().await?.0)
    }

    /// [`Self::client`] and the API server's address, for messages that must say which server
    /// did not answer.
    pub async fn client_at(&self) -> anyhow::Result<(Client, String)> {
        let config = self.config().await?;
        let url = config.cluster_url.to_string().trim_end_matches('/').to_owned();
        Ok((Client::try_from(config).context("building the Kubernetes client")?, url))
    }

    /// [`Self::client`], after asking the server its version: a kubeconfig pointing at another
    /// HTTP server (a wrong port, an Elasticsearch) is said to be one (exit 3, naming the URL)
    /// instead of failing later as missing resource types or an HTML page quoted as an API error.
    /// For the verbs that change or read releases; `check` reports per item instead.
    pub async fn api_client(&self) -> anyhow::Result<Client> {
        let (client, url) = self.client_at().await?;
        // A server that accepts the connection and never answers would otherwise hold the verb for
        // kube's read timeout (minutes).
        let asked = tokio::time::timeout(std::time::Duration::from_secs(30), client.apiserver_version()).await;
        let Ok(answer) = asked else {
            return Err(Unreachable {
                what: "the Kubernetes API server".into(),
                detail: format!("{url} accepted the connection but did not answer GET /version within 30 s"),
            }
            .into());
        };
        match answer {
            Ok(_) => Ok(client),
            Err(e) if is_transport(&e) => Err(transport_error(e, &format!("connecting to {url}"))),
            // Refused credentials are the real calls' to report (a server may hide /version).
            Err(kube::Error::Api(s)) if s.code == 401 || s.code == 403 => Ok(client),
            Err(e) => {
                // By characters: an HTML page's text may be multi-byte, and String::truncate panics
                // off a character boundary.
                let why: String = match &e {
                    kube::Error::Api(s) => format!("HTTP {}", s.code),
                    other => other.to_string(),
                }
                .chars()
                .take(200)
                .collect();
                Err(Unreachable {
                    what: "the Kubernetes API server".into(),
                    detail: format!(
                        "{url} does not answer as one (GET /version: {why}): is the kubeconfig's server the API \
                         server's address and port?"
                    ),
                }
                .into())
            }
        }
    }

    pub async fn config(&self) -> anyhow::Result<Config> {
        let options = KubeConfigOptions { context: self.context.clone(), ..Default::default() };
        match &self.kubeconfig {
            Some(path) => {
                let kubeconfig = read_kubeconfig(path)?;
                unknown_context(&kubeconfig, self.context.as_deref(), &path.display().to_string())?;
                Config::from_custom_kubeconfig(kubeconfig, &options)
                    .await
                    .map_err(|e| usage(format!("kubeconfig {}: {e}", path.display())))
            }
            None if self.context.is_some() => {
                if let Ok(kubeconfig) = Kubeconfig::read() {
                    unknown_context(
                        &kubeconfig,
                        self.context.as_deref(),
                        "the kubeconfig ($KUBECONFIG or ~/.kube/config)",
                    )?;
                }
                Config::from_kubeconfig(&options)
                    .await
                    .map_err(|e| usage(format!("kubeconfig (context {:?}): {e}", self.context)))
            }
            // With nothing naming a cluster, kube's inference error (an in-cluster variable, then the
            // default path, both Debug-quoted) reads as a fault; say what to give instead.
            None if !self.configured() => Err(usage(format!(
                "no cluster configured: give --kubeconfig FILE (or --context), set $KUBECONFIG, put `kube` \
                 in the --targets file, create {}, or run in a pod",
                home_kubeconfig().map_or_else(|| "~/.kube/config".to_owned(), |p| p.display().to_string())
            ))),
            None => Config::infer().await.map_err(|e| usage(format!("no usable cluster configuration: {e}"))),
        }
    }
}

/// `--context` naming no context of the kubeconfig: say which it has (kube says only "failed to
/// load current context").
fn unknown_context(kubeconfig: &Kubeconfig, context: Option<&str>, shown: &str) -> anyhow::Result<()> {
    let Some(wanted) = context else { return Ok(()) };
    if kubeconfig.contexts.iter().any(|c| c.name == wanted) {
        return Ok(());
    }
    let names: Vec<&str> = kubeconfig.contexts.iter().map(|c| c.name.as_str()).collect();
    Err(usage(format!(
        "{shown} has no context {wanted:?}; it has: {}",
        if names.is_empty() { "none".to_owned() } else { names.join(", ") }
    )))
}

/// Read a kubeconfig file; a bad one is a usage error naming the path once (kube's own message for
/// an unreadable file quotes it a second time, Debug-formatted).
pub fn read_kubeconfig(path: &std::path::Path) -> anyhow::Result<Kubeconfig> {
    Kubeconfig::read_from(path).map_err(|e| match e {
        kube::config::KubeconfigError::ReadConfig(io, _) => {
            usage(format!("kubeconfig {}: cannot read it: {io}", path.display()))
        }
        e => usage(format!("kubeconfig {}: {e}", path.display())),
    })
}

fn home_kubeconfig() -> Option<PathBuf> {
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".kube").join("config"))
}

/// True when a kube error means the API server could not be reached or did not answer in time
/// (as opposed to an answer such as 403 or 404).
pub fn is_transport(err: &kube::Error) -> bool {
    matches!(err, kube::Error::HyperError(_) | kube::Error::Service(_) | kube::Error::ReadEvents(_))
}

/// Wrap a kube error from a request: transport failures become `Unreachable` (exit 3), API answers
/// keep their status and message.
pub fn transport_error(err: kube::Error, doing: &str) -> anyhow::Error {
    if is_transport(&err) {
        Unreachable { what: "the Kubernetes API server".into(), detail: format!("{doing}: {}", with_causes(&err)) }
            .into()
    } else {
        anyhow::Error::new(err).context(doing.to_owned())
    }
}

/// The error and its causes: kube's own text of a transport failure is only "client error
/// (Connect)"; the reason (refused, no route, DNS, TLS) is in the sources.
pub fn with_causes(err: &kube::Error) -> String {
    let mut text = err.to_string();
    let mut cause = std::error::Error::source(err);
    while let Some(c) = cause {
        let more = c.to_string();
        if !text.ends_with(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        cause = c.source();
    }
    text
}

/// HTTP status of an API answer, if the error is one.
pub fn api_status(err: &kube::Error) -> Option<u16> {
    match err {
        kube::Error::Api(status) => Some(status.code),
        _ => None,
    }
}
