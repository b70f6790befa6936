//! Attestations: a person signs off a checklist item no probe can prove. Stored in the release
//! namespace as labelled ConfigMaps (one per item, `audctl-attest-<item>`), like evidence records, so
//! the whole team and every CI run see the same sign-offs.

use std::collections::BTreeMap;

use chrono::{DateTime, SecondsFormat, Utc};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, DeleteParams, ListParams, ObjectMeta, Patch, PatchParams};
use serde::Serialize;

use crate::cli::{AttestArgs, GlobalArgs};
use crate::error::{CheckFailed, usage};
use crate::output::{self, Report};

use super::model::{self, Proof};
use super::waivers::{valid_through, validity};

pub const KIND_LABEL: &str = "audctl.io/kind";
pub const ITEM_LABEL: &str = "audctl.io/item";
const MANAGER: &str = "audctl";

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Attestation {
    pub item: String,
    pub by: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub link: Option<String>,
    pub at: DateTime<Utc>,
    /// The first instant it no longer holds (a date's next midnight, UTC).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires: Option<DateTime<Utc>>,
    /// The last day it holds, when `expires` is a midnight: the date as given to `--expires`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub valid_through: Option<chrono::NaiveDate>,
    /// The ConfigMap holding it.
    pub name: String,
}

impl Attestation {
    pub fn expired(&self, now: DateTime<Utc>) -> bool {
        self.expires.is_some_and(|e| e <= now)
    }

    pub fn describe(&self) -> String {
        let mut s = format!("attested by {} on {}", self.by, self.at.format("%Y-%m-%d %H:%M UTC"));
        if let Some(e) = self.expires {
            s.push_str(&format!(", {}", validity(e)));
        }
        if let Some(n) = &self.note {
            s.push_str(&format!(": {n}"));
        }
        if let Some(l) = &self.link {
            s.push_str(&format!(" ({l})"));
        }
        s
    }
}

pub fn configmap_name(item: &str) -> String {
    let clean: String = item
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '.' { c.to_ascii_lowercase() } else { '-' })
        .collect();
    format!("audctl-attest-{}", clean.trim_matches('-'))
}

fn labels(item: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/managed-by".to_owned(), "audctl".to_owned()),
        (KIND_LABEL.to_owned(), "attestation".to_owned()),
        (ITEM_LABEL.to_owned(), item.to_owned()),
    ])
}

/// Every attestation in `namespace`, by item.
pub async fn list(client: &kube::Client, namespace: &str) -> Result<BTreeMap<String, Attestation>, kube::Error> {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    let lp = ListParams::default().labels(&format!("{KIND_LABEL}=attestation"));
    let mut out = BTreeMap::new();
    for cm in api.list(&lp).await?.items {
        if let Some(a) = from_configmap(&cm) {
            out.insert(a.item.clone(), a);
        }
    }
    Ok(out)
}

fn from_configmap(cm: &ConfigMap) -> Option<Attestation> {
    let data = cm.data.as_ref()?;
    let get = |k: &str| data.get(k).filter(|v| !v.is_empty()).cloned();
    let parse = |k: &str| get(k).and_then(|v| DateTime::parse_from_rfc3339(&v).ok()).map(|d| d.with_timezone(&Utc));
    Some(Attestation {
        item: get("item")?,
        by: get("by")?,
        note: get("note"),
        link: get("link"),
        at: parse("at")?,
        expires: parse("expires"),
        valid_through: parse("expires").and_then(valid_through),
        name: cm.metadata.name.clone().unwrap_or_default(),
    })
}

pub async fn write(client: &kube::Client, namespace: &str, a: &Attestation) -> Result<(), kube::Error> {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    let mut data = BTreeMap::from([
        ("item".to_owned(), a.item.clone()),
        ("by".to_owned(), a.by.clone()),
        ("at".to_owned(), a.at.to_rfc3339_opts(SecondsFormat::Secs, true)),
        ("audctlVersion".to_owned(), env!("CARGO_PKG_VERSION").to_owned()),
    ]);
    for (k, v) in [("note", &a.note), ("link", &a.link)] {
        if let Some(v) = v {
            data.insert(k.to_owned(), v.clone());
        }
    }
    if let Some(e) = a.expires {
        data.insert("expires".to_owned(), e.to_rfc3339_opts(SecondsFormat::Secs, true));
    }
    let cm = ConfigMap {
        metadata: ObjectMeta {
            name: Some(a.name.clone()),
            namespace: Some(namespace.to_owned()),
            labels: Some(labels(&a.item)),
            ..Default::default()
        },
        data: Some(data),
        ..Default::default()
    };
    // Server-side apply with force: a new attestation of the same item replaces the previous one whole.
    let mut value = serde_json::to_value(&cm).map_err(kube::Error::SerdeError)?;
    value["apiVersion"] = "v1".into();
    value["kind"] = "ConfigMap".into();
    api.patch(&a.name, &PatchParams::apply(MANAGER).force(), &Patch::Apply(&value)).await?;
    Ok(())
}

pub async fn revoke(client: &kube::Client, namespace: &str, item: &str) -> Result<bool, kube::Error> {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    match api.delete(&configmap_name(item), &DeleteParams::default()).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(false),
        Err(e) => Err(e),
    }
}

/// `audctl attest`.
pub fn run(args: &AttestArgs, global: &GlobalArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(run_async(args, global))
}

async fn run_async(args: &AttestArgs, global: &GlobalArgs) -> anyhow::Result<()> {
    let checklist = model::load(args.checklist.as_deref(), &super::probe_ids())?;
    // Validate the request before touching the cluster.
    let item = match (&args.item, args.list) {
        (_, true) => None,
        (Some(id), false) => {
            let Some(item) = checklist.item(id) else {
                let ids = checklist.ids();
                let near =
                    ids.iter().min_by_key(|k| strsim::levenshtein(k, id)).filter(|k| strsim::levenshtein(k, id) <= 3);
                return Err(usage(format!(
                    "unknown checklist item {id:?}{}; `audctl check -o json` lists the items",
                    near.map(|k| format!(" (did you mean {k:?}?)")).unwrap_or_default()
                )));
            };
            if item.proof != Proof::Attest && !args.revoke {
                return Err(usage(format!(
                    "item {id:?} is proven by {}, not by attestation; to accept it as not done, add a waiver \
                     (checklists/waivers.yaml)",
                    match item.proof {
                        Proof::Evidence => "an evidence record",
                        _ => "probes",
                    }
                )));
            }
            Some(item.id.clone())
        }
        (None, false) => return Err(usage("name the checklist item to attest (or --list)")),
    };
    let expires = match &args.expires {
        Some(e) => Some(super::waivers::parse_expiry(e).map_err(|e| usage(format!("--expires: {e}")))?),
        None => None,
    };
    let client = super::cluster_client(global).await?.ok_or_else(|| {
        usage("attestations are kept in the cluster: give --kubeconfig/--context or a targets file with `kube`")
    })?;
    let ns = &global.namespace;
    let doing = |what: &str| format!("{what} attestations in namespace {ns}");
    match item {
        None => {
            let all = list(&client, ns).await.map_err(|e| crate::kube::transport_error(e, &doing("listing")))?;
            let report = AttestationList { now: Utc::now(), attestations: all.into_values().collect() };
            output::emit(global.output, &report)
        }
        Some(id) if args.revoke => {
            let found =
                revoke(&client, ns, &id).await.map_err(|e| crate::kube::transport_error(e, &doing("revoking")))?;
            if found {
                eprintln!("revoked the attestation of {id} in namespace {ns}");
                Ok(())
            } else {
                let msg = format!("no attestation of {id} in namespace {ns}: nothing to revoke");
                eprintln!("{msg}");
                Err(CheckFailed(msg).into())
            }
        }
        Some(id) => {
            let by = args.by.clone().filter(|b| !b.trim().is_empty()).ok_or_else(|| usage("--by NAME is required"))?;
            let a = Attestation {
                name: configmap_name(&id),
                item: id,
                by,
                note: args.note.clone(),
                link: args.link.clone(),
                at: Utc::now(),
                expires,
                valid_through: expires.and_then(valid_through),
            };
            if a.expired(a.at) {
                return Err(usage("--expires is in the past"));
            }
            write(&client, ns, &a).await.map_err(|e| crate::kube::transport_error(e, &doing("writing")))?;
            eprintln!("{} ({}); stored as ConfigMap {ns}/{}", a.item, a.describe(), a.name);
            Ok(())
        }
    }
}

#[derive(Serialize)]
struct AttestationList {
    #[serde(skip)]
    now: DateTime<Utc>,
    attestations: Vec<Attestation>,
}

impl Report for AttestationList {
    fn table(&self) -> comfy_table::Table {
        let mut t = output::new_table(["ITEM", "BY", "AT", "EXPIRES", "NOTE / LINK"]);
        for a in &self.attestations {
            let expires = match a.expires {
                Some(e) if a.expired(self.now) => format!("{} (expired)", validity(e)),
                Some(e) => validity(e),
                None => "-".into(),
            };
            let note = [a.note.clone(), a.link.clone()].into_iter().flatten().collect::<Vec<_>>().join(" ");
            t.add_row(vec![a.item.clone(), a.by.clone(), a.at.format("%Y-%m-%d %H:%M").to_string(), expires, note]);
        }
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attestation(expires: &str) -> Attestation {
        let expires = super::super::waivers::parse_expiry(expires).ok();
        Attestation {
            item: "disaster-recovery".into(),
            by: "alice".into(),
            note: None,
            link: None,
            at: DateTime::parse_from_rfc3339("2027-01-10T09:00:00Z").map(|d| d.with_timezone(&Utc)).unwrap(),
            expires,
            valid_through: expires.and_then(valid_through),
            name: configmap_name("disaster-recovery"),
        }
    }

    #[test]
    fn expiry_is_shown_as_given() {
        let a = attestation("2027-05-31");
        assert_eq!(a.describe(), "attested by alice on 2027-01-10 09:00 UTC, valid through 2027-05-31");
        let list = AttestationList { now: a.at, attestations: vec![a.clone()] };
        let table = list.table().to_string();
        assert!(table.contains("valid through 2027-05-31") && !table.contains("2027-06-01"), "{table}");
        let list = AttestationList { now: a.expires.unwrap(), attestations: vec![a.clone()] };
        assert!(list.table().to_string().contains("valid through 2027-05-31 (expired)"));
        let json = serde_json::to_value(&a).unwrap();
        assert_eq!(json["expires"], "2027-06-01T00:00:00Z", "the stored instant stays");
        assert_eq!(json["validThrough"], "2027-05-31");
        let timed = attestation("2027-05-31T12:30:00Z");
        assert!(timed.describe().ends_with(", valid until 2027-05-31 12:30 UTC"), "{}", timed.describe());
    }
}
