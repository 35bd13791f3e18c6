//! NftRules against the real nftables. Needs root, and fails rather than skips without it.
//!
//! Safety: nft only ever runs inside a network namespace this test creates (`wnft-<pid>-<tag>`, through
//! `ip netns exec`), which a guard deletes even when the test panics; the host's firewall is never read or
//! written. Addresses are from 10.244.0.0/16 and 198.18.0.0/15.

use std::process::Command;

use weft_backends::rules::{
    iptables, reconcile_rules, BaseChain, ChainType, Hook, Match, NftRules, Policy, Rule, RuleOp, RuleSet, Rules,
    Table, TableFamily, TableId, Verdict,
};

struct Netns {
    name: String,
}

impl Netns {
    fn create(tag: &str) -> Netns {
        // SAFETY: geteuid has no preconditions and cannot fail.
        let euid = unsafe { libc::geteuid() };
        assert_eq!(euid, 0, "nft_root tests create network namespaces and must run as root (euid is {euid})");
        let name = format!("wnft-{}-{tag}", std::process::id());
        run("ip", &["netns", "add", &name], None);
        Netns { name }
    }

    /// `nft <args>` inside the namespace; panics when it fails.
    fn nft(&self, args: &str) -> String {
        let mut all = vec!["netns", "exec", &self.name, "nft"];
        all.extend(args.split_whitespace());
        run("ip", &all, None)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.name]).status();
    }
}

fn run(program: &str, args: &[&str], input: Option<&str>) -> String {
    use std::io::Write;
    let mut child = Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("running {program}: {e}"));
    child.stdin.take().unwrap().write_all(input.unwrap_or_default().as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{program} {} failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

fn ours() -> TableId {
    TableId::new(TableFamily::Inet, "weft")
}

/// Masquerade and FORWARD accepts for both families in one inet table, with a regular chain reached by a jump.
fn table() -> Table {
    let pods4 = "10.244.0.0/16".parse().unwrap();
    let pods6 = "fd00:10:244::/56".parse().unwrap();
    let own = "10.244.1.0/24".parse().unwrap();
    Table::new(ours())
        .base_chain(
            "postrouting",
            BaseChain { chain_type: ChainType::Nat, hook: Hook::Postrouting, priority: 100, policy: Policy::Accept },
            vec![
                Rule::new(
                    vec![
                        Match::Source { net: pods4, negated: false },
                        Match::Destination { net: pods4, negated: false },
                    ],
                    Verdict::Return,
                )
                .with_comment("pod to pod"),
                Rule::new(
                    vec![Match::Source { net: pods4, negated: false }],
                    Verdict::Masquerade { fully_random: true },
                ),
                Rule::new(
                    vec![Match::Source { net: pods4, negated: true }, Match::Destination { net: own, negated: false }],
                    Verdict::Return,
                ),
                Rule::new(
                    vec![Match::Source { net: pods6, negated: false }],
                    Verdict::Masquerade { fully_random: false },
                ),
            ],
        )
        .base_chain(
            "forward",
            BaseChain { chain_type: ChainType::Filter, hook: Hook::Forward, priority: 0, policy: Policy::Drop },
            vec![
                Rule::new(
                    vec![Match::InInterface { name: "flannel.1".into(), negated: false }],
                    Verdict::Jump("pods".into()),
                ),
                Rule::new(vec![Match::Destination { net: pods6, negated: false }], Verdict::Accept),
            ],
        )
        .regular_chain(
            "pods",
            vec![
                Rule::new(vec![Match::Source { net: "10.244.7.7/32".parse().unwrap(), negated: false }], Verdict::Drop),
                Rule::new(vec![Match::OutInterface { name: "u0".into(), negated: true }], Verdict::Accept),
            ],
        )
}

#[tokio::test]
async fn applies_detects_drift_repairs_and_deletes_a_table() {
    let ns = Netns::create("apply");
    let mut nft = NftRules::in_named_netns(&ns.name);
    // Someone else's table in the same namespace: never read, never touched.
    ns.nft("add table ip filter");
    ns.nft("add chain ip filter input { type filter hook input priority 0 ; }");
    ns.nft("add rule ip filter input counter accept");
    let foreign = ns.nft("list table ip filter");
    let owned = [ours()];
    let mut desired = RuleSet::default();
    desired.add(table());

    // Nothing there: one replace creates the table.
    let report = reconcile_rules(&mut nft, &owned, &desired).await.unwrap();
    assert!(report.failed.is_empty(), "{:?}", report.failed);
    assert_eq!(report.applied, vec![RuleOp::ReplaceTable(table())]);
    assert_eq!(nft.observe(&owned).await.unwrap(), desired, "what nft lists reads back as what was applied");

    // Applying again changes nothing.
    let report = reconcile_rules(&mut nft, &owned, &desired).await.unwrap();
    assert!(report.applied.is_empty() && report.failed.is_empty(), "{report:?}");

    // Drift: a chain flushed by hand, then a rule the model cannot express added by hand. Each is seen, and the
    // whole table is replaced in one transaction.
    ns.nft("flush chain inet weft pods");
    assert_ne!(nft.observe(&owned).await.unwrap(), desired);
    let report = reconcile_rules(&mut nft, &owned, &desired).await.unwrap();
    assert_eq!(report.applied.len(), 1, "{report:?}");
    assert_eq!(nft.observe(&owned).await.unwrap(), desired);
    ns.nft("add rule inet weft pods counter");
    let report = reconcile_rules(&mut nft, &owned, &desired).await.unwrap();
    assert_eq!(report.applied.len(), 1, "{report:?}");
    assert_eq!(nft.observe(&owned).await.unwrap(), desired);
    assert!(!ns.nft("list table inet weft").contains("counter"));

    // A table the kernel refuses leaves the old one in place (nft applies all of a script or nothing).
    let mut broken = table();
    broken.chains.get_mut("pods").unwrap().rules.push(Rule::new(vec![], Verdict::Jump("postrouting".into())));
    let err = nft.apply(&RuleOp::ReplaceTable(broken)).await.unwrap_err();
    assert!(err.to_string().contains("nft"), "{err}");
    assert_eq!(nft.observe(&owned).await.unwrap(), desired);

    // No longer wanted: deleted, and deleting again is fine.
    let report = reconcile_rules(&mut nft, &owned, &RuleSet::default()).await.unwrap();
    assert_eq!(report.applied, vec![RuleOp::DeleteTable(ours())]);
    assert!(nft.observe(&owned).await.unwrap().is_empty());
    nft.apply(&RuleOp::DeleteTable(ours())).await.unwrap();
    assert_eq!(ns.nft("list table ip filter"), foreign);
}

#[test]
fn the_iptables_rendering_is_accepted_by_iptables_restore() {
    let ns = Netns::create("ipt");
    for restore in iptables::render(&table()).unwrap() {
        let program = match restore.family {
            weft_backends::Family::V4 => "iptables-restore",
            weft_backends::Family::V6 => "ip6tables-restore",
        };
        // --test parses and checks every rule against the kernel without committing anything.
        run("ip", &["netns", "exec", &ns.name, program, "--noflush", "--test"], Some(&restore.text));
    }
}
