//! The Helm chart mounts the rules ConfigMap as a directory, and the kubelet updates such a
//! volume in place the way its atomic writer does: the files live in a timestamped directory
//! `..<timestamp>`, `..data` is a symlink to it, and each visible file is a symlink through
//! `..data`. An update writes a new timestamped directory, points a temporary symlink at it,
//! renames that over `..data` (one atomic step), adjusts the visible symlinks and removes the
//! old directory. Nothing the rules loader watches is written in place. These tests replay that
//! sequence and check that the running reloader swaps the new rules in, with the periodic check
//! off, so the file watch alone must see it.

use std::os::unix::fs::symlink;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tailsift::rules::reload::{Loader, Reloaded, Reloader, Swap};
use tailsift::rules::{RuleOptions, RuleSet};

/// A directory updated as the kubelet updates a ConfigMap volume.
struct ConfigMapVolume {
    dir: tempfile::TempDir,
    generation: u32,
    current: Option<String>,
}

impl ConfigMapVolume {
    fn new(files: &[(&str, &str)]) -> Self {
        let mut v = ConfigMapVolume {
            dir: tempfile::tempdir().unwrap(),
            generation: 0,
            current: None,
        };
        v.publish(files);
        v
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn publish(&mut self, files: &[(&str, &str)]) {
        let root = self.dir.path();
        self.generation += 1;
        let data_dir = format!("..2026_11_21_09_00_00.{:09}", self.generation);
        std::fs::create_dir(root.join(&data_dir)).unwrap();
        for (name, text) in files {
            std::fs::write(root.join(&data_dir).join(name), text).unwrap();
        }
        symlink(&data_dir, root.join("..data_tmp")).unwrap();
        std::fs::rename(root.join("..data_tmp"), root.join("..data")).unwrap();
        for (name, _) in files {
            let visible = root.join(name);
            if visible.symlink_metadata().is_err() {
                symlink(Path::new("..data").join(name), visible).unwrap();
            }
        }
        for entry in std::fs::read_dir(root).unwrap() {
            let name = entry.unwrap().file_name().into_string().unwrap();
            if !name.starts_with("..") && !files.iter().any(|(f, _)| *f == name) {
                std::fs::remove_file(root.join(&name)).unwrap();
            }
        }
        if let Some(old) = self.current.replace(data_dir) {
            std::fs::remove_dir_all(root.join(old)).unwrap();
        }
    }
}

fn rule(name: &str, rate: u32) -> String {
    format!("rules:\n  - name: {name}\n    outcome: keep\n    sample_rate: {rate}\n")
}

fn names(set: &RuleSet) -> Vec<String> {
    set.rules().iter().map(|r| r.name.to_string()).collect()
}

/// A loader on `volume` whose swaps land in the returned cell.
fn loader(volume: &ConfigMapVolume) -> (Loader, Arc<Mutex<Arc<RuleSet>>>) {
    let options = RuleOptions::default();
    let first = Arc::new(RuleSet::load_with(volume.path(), &options).expect("initial rules load"));
    let version = first.version().to_string();
    let cell = Arc::new(Mutex::new(first));
    let target = cell.clone();
    let swap: Swap = Arc::new(move |new| std::mem::replace(&mut *target.lock().unwrap(), new));
    (Loader::new(volume.path(), options, &version, swap), cell)
}

#[test]
fn loads_the_visible_files_of_a_configmap_volume_and_follows_an_update() {
    let mut volume = ConfigMapVolume::new(&[("90-baseline.yaml", &rule("baseline", 10))]);
    let (mut loader, cell) = loader(&volume);
    assert_eq!(names(&cell.lock().unwrap()), ["baseline"]);
    assert_eq!(loader.reload(false), Reloaded::Unchanged);

    // A file added, the default changed: one atomic update.
    volume.publish(&[
        (
            "10-errors.yaml",
            "rules:\n  - name: errors\n    conditions: trace.error = true\n    outcome: keep\n",
        ),
        ("90-baseline.yaml", &rule("baseline-20", 20)),
    ]);
    assert!(matches!(loader.reload(false), Reloaded::Swapped(_)));
    assert_eq!(names(&cell.lock().unwrap()), ["errors", "baseline-20"]);

    // A bad update keeps the rules in use; the next good one is taken.
    volume.publish(&[(
        "90-baseline.yaml",
        "rules:\n  - name: broken\n    outcome: maybe\n",
    )]);
    assert!(matches!(loader.reload(false), Reloaded::Failed(_)));
    assert_eq!(names(&cell.lock().unwrap()), ["errors", "baseline-20"]);
    volume.publish(&[("90-baseline.yaml", &rule("baseline-5", 5))]);
    assert!(matches!(loader.reload(false), Reloaded::Swapped(_)));
    assert_eq!(names(&cell.lock().unwrap()), ["baseline-5"]);
}

#[tokio::test]
async fn the_file_watch_alone_sees_a_configmap_update() {
    let mut volume = ConfigMapVolume::new(&[("90-baseline.yaml", &rule("baseline", 10))]);
    let (loader, cell) = loader(&volume);
    // Poll interval zero: no periodic check, only the watch (and SIGHUP, not sent here).
    let reloader = Reloader::spawn(loader, Duration::ZERO);
    tokio::time::sleep(Duration::from_millis(200)).await; // the watch is in place

    volume.publish(&[("90-baseline.yaml", &rule("updated-by-kubelet", 2))]);
    let swapped = async {
        while names(&cell.lock().unwrap()) != ["updated-by-kubelet"] {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    let seen = tokio::time::timeout(Duration::from_secs(10), swapped).await;
    reloader.stop().await;
    assert!(
        seen.is_ok(),
        "the reloader did not pick up the ConfigMap update within 10 s: rules are {:?}",
        names(&cell.lock().unwrap())
    );
}
