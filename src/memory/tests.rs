use super::*;

fn fake(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (path, text) in files {
        let p = dir.path().join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }
    dir
}

#[test]
fn budget_comes_from_config_then_cgroup_v2_then_v1_then_the_fallback() {
    let gib = 1u64 << 30;
    let v1_unlimited = "9223372036854771712\n";
    // (configured, cgroup files, budget, source)
    type Case<'a> = (Option<u64>, &'a [(&'a str, &'a str)], u64, BudgetSource);
    let cases: &[Case] = &[
        (
            Some(100 << 20),
            &[("memory.max", "1073741824\n")],
            100 << 20,
            BudgetSource::Configured,
        ),
        (
            None,
            &[("memory.max", "1073741824\n")],
            gib / 2,
            BudgetSource::CgroupV2 { limit: gib },
        ),
        (
            None,
            &[("memory/memory.limit_in_bytes", "2147483648\n")],
            gib,
            BudgetSource::CgroupV1 { limit: 2 * gib },
        ),
        // v2 without a limit: the fallback, even if v1 files linger.
        (
            None,
            &[
                ("memory.max", "max\n"),
                ("memory/memory.limit_in_bytes", "2147483648\n"),
            ],
            FALLBACK_BUDGET,
            BudgetSource::Fallback,
        ),
        (
            None,
            &[("memory/memory.limit_in_bytes", v1_unlimited)],
            FALLBACK_BUDGET,
            BudgetSource::Fallback,
        ),
        (
            None,
            &[("memory.max", "garbage")],
            FALLBACK_BUDGET,
            BudgetSource::Fallback,
        ),
        (None, &[], FALLBACK_BUDGET, BudgetSource::Fallback),
    ];
    for (configured, files, want, source) in cases {
        let dir = fake(files);
        assert_eq!(
            resolve_budget(*configured, dir.path()),
            (*want, *source),
            "{files:?}"
        );
    }
}

#[test]
fn watermarks_are_fractions_of_the_budget() {
    let b = Budget::new(1000, 0.9, 0.75);
    assert_eq!(
        (b.max_bytes, b.pause_above, b.resume_below),
        (1000, 900, 750)
    );
}
