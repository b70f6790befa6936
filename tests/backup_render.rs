//! The backup CronJobs `audctl render` adds: the guide's cadence, and command lines audctl accepts.

use std::path::Path;

use clap::Parser;

fn cronjobs(values: &str) -> Vec<serde_json::Value> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let v = audctl::values::load(&[root.join("values").join(values)], &[]).expect("values load");
    let objects = audctl::render::render(&v, None).expect("render");
    objects
        .iter()
        .filter(|o| o.kind == "CronJob")
        .map(|o| serde_yaml::from_str::<serde_json::Value>(&o.text).expect("yaml"))
        .collect()
}

#[test]
fn prod_backs_up_at_the_guides_cadence_with_valid_command_lines() {
    let jobs = cronjobs("values-prod.yaml");
    let find = |name: &str| {
        jobs.iter()
            .find(|j| j["metadata"]["name"] == format!("audit-trail-backup-{name}"))
            .unwrap_or_else(|| panic!("no CronJob for {name}"))
            .clone()
    };
    let hourly = |s: &str| s.split_whitespace().skip(1).all(|f| f == "*");
    let daily = |s: &str| s.split_whitespace().skip(2).all(|f| f == "*");
    for (name, every_hour) in [("postgres", true), ("redis", true), ("kafka", true), ("search", false)] {
        let j = find(name);
        let schedule = j["spec"]["schedule"].as_str().unwrap_or_default();
        assert!(if every_hour { hourly(schedule) } else { daily(schedule) && !hourly(schedule) }, "{name}: {schedule}");
        assert_eq!(j["spec"]["concurrencyPolicy"], "Forbid");
    }
    let verify = find("verify");
    let fields: Vec<&str> = verify["spec"]["schedule"].as_str().unwrap_or_default().split_whitespace().collect();
    assert_ne!(fields[4], "*", "verify runs weekly: {fields:?}");
    for j in &jobs {
        let args: Vec<String> = serde_json::from_value(
            j["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["args"].clone(),
        )
        .expect("args");
        let argv: Vec<String> = std::iter::once("audctl".to_owned()).chain(args.iter().cloned()).collect();
        audctl::cli::Cli::try_parse_from(&argv)
            .unwrap_or_else(|e| panic!("{argv:?} is not a valid audctl command line: {e}"));
        assert!(args.windows(2).any(|w| w[0] == "--repo" && w[1] == "/backups"), "{args:?}");
    }
}

#[test]
fn local_has_no_backup_cronjobs() {
    assert!(cronjobs("values-local.yaml").is_empty());
}
