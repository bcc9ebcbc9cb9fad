//! Every seed and every file of the kept corpus runs through its target: a crash found once
//! by fuzzing stays fixed, on stable Rust, under `cargo test`.

use std::path::Path;

fn corpus() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/corpus"))
}

#[test]
fn every_target_has_seeds_and_a_kept_corpus() {
    for (name, _) in skoala_fuzz::TARGETS {
        assert!(
            !skoala_fuzz::seeds::seeds(name).is_empty(),
            "target {name} has no seeds"
        );
        let dir = corpus().join(name);
        let files = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .count();
        assert!(files > 0, "{} is empty", dir.display());
    }
}

#[test]
fn every_corpus_folder_is_a_target() {
    for entry in std::fs::read_dir(corpus()).expect("the corpus folder") {
        let name = entry.expect("an entry").file_name();
        let name = name.to_string_lossy();
        assert!(
            skoala_fuzz::TARGETS.iter().any(|(t, _)| *t == name),
            "corpus/{name} belongs to no target"
        );
    }
}

#[test]
fn the_seeds_and_the_corpus_replay_without_a_crash() {
    let mut replayed = 0;
    for (name, target) in skoala_fuzz::TARGETS {
        for seed in skoala_fuzz::seeds::seeds(name) {
            target(&seed);
            replayed += 1;
        }
        let dir = corpus().join(name);
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.expect("an entry").path())
            .collect();
        files.sort();
        for file in files {
            let data = std::fs::read(&file).expect("a corpus file");
            let outcome = std::panic::catch_unwind(|| target(&data));
            assert!(outcome.is_ok(), "{} crashes its target", file.display());
            replayed += 1;
        }
    }
    assert!(replayed > skoala_fuzz::TARGETS.len());
}

/// The seeds are inputs each parser accepts, so fuzzing starts inside the format and not at
/// its first byte.
#[test]
fn the_seeds_are_accepted_by_their_parsers() {
    use skoala_fuzz::seeds::seeds;
    let text = |b: &[u8]| String::from_utf8(b.to_vec()).expect("UTF-8 seed");

    let plan = skoala_plan::UpgradePlan::from_yaml(&text(&seeds("plan_document")[0])).unwrap();
    skoala_plan::validate(&plan).expect("the plan seed validates");

    let release = &seeds("helm_release")[0];
    let info = skoala_upgrade::inventory::decode_release("seed", release, &["image.tag".into()])
        .expect("the release seed decodes");
    assert_eq!(
        info.image_tags.get("image.tag").map(String::as_str),
        Some("v0.19.2")
    );

    let chart = &seeds("chart_archive")[0];
    assert_eq!(
        skoala_upgrade::chart::metadata(chart).expect("the chart seed has a Chart.yaml"),
        ("skoala-init".to_string(), "0.19.2".to_string())
    );
    assert_eq!(skoala_upgrade::crds::extract(chart).expect("CRDs").len(), 1);

    for d in seeds("duration") {
        skoala_support::duration::parse(&text(&d)).expect("the duration seeds parse");
    }

    let identity = text(&seeds("pem")[1]);
    let parts: Vec<&str> = identity.split(skoala_fuzz::SEPARATOR).collect();
    skoala_agent::credentials::Credentials::from_pem(parts[0], parts[1], parts[2])
        .expect("the identity seed loads");

    use prost::Message;
    let task = skoala_proto::v1::CoordinatorMessage::decode(&seeds("coordinator_messages")[0][..])
        .expect("the task seed decodes");
    let Some(skoala_proto::v1::coordinator_message::Body::Task(task)) = task.body else {
        panic!("the coordinator seed is a task");
    };
    skoala_agent::tasks::plan(&task).expect("the task seed is a task the agent plans");

    skoala_support::admin_config::AdminConfig::from_yaml(&text(&seeds("admin_config")[0]))
        .expect("the admin.yaml seed parses");
}
