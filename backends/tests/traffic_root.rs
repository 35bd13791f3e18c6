//! flannel's masquerade and FORWARD rule sets through both real appliers: NftRules and IptablesRules (legacy and
//! nft backends of iptables). Needs root, and fails rather than skips without it.
//!
//! Safety: every firewall program runs inside a network namespace this test creates (`wtrf-<pid>-<tag>`, through
//! `ip netns exec`), which a guard deletes even when the test panics; the host's firewall is never read or written.

use std::process::Command;

use weft_backends::rules::traffic::{table_id, FamilyNetworks, TrafficRules};
use weft_backends::rules::{reconcile_rules, IptablesRules, IptablesVariant, NftRules, RuleOp, RuleSet, Rules};
use weft_backends::Family;

struct Netns {
    name: String,
}

impl Netns {
    fn create(tag: &str) -> Netns {
        // SAFETY: geteuid has no preconditions and cannot fail.
        let euid = unsafe { libc::geteuid() };
        assert_eq!(euid, 0, "traffic_root tests create network namespaces and must run as root (euid is {euid})");
        let name = format!("wtrf-{}-{tag}", std::process::id());
        let status = Command::new("ip").args(["netns", "add", &name]).status().unwrap();
        assert!(status.success(), "ip netns add {name}");
        Netns { name }
    }

    fn run(&self, args: &[&str]) -> String {
        let out = Command::new("ip").args(["netns", "exec", &self.name]).args(args).output().unwrap();
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.name]).status();
    }
}

const ALL: TrafficRules = TrafficRules { masquerade: true, forward: true, fully_random: true };

fn networks(subnet: &str) -> Vec<(Family, FamilyNetworks)> {
    vec![
        (Family::V4, FamilyNetworks { network: "10.244.0.0/16".parse().unwrap(), subnet: subnet.parse().unwrap() }),
        (
            Family::V6,
            FamilyNetworks {
                network: "fd00:10:244::/56".parse().unwrap(),
                subnet: "fd00:10:244:1::/64".parse().unwrap(),
            },
        ),
    ]
}

/// Apply, read back, no-op, drift repaired, an old subnet's rules replaced, deleted: the same for any applier.
async fn lifecycle<R: Rules>(rules: &mut R, flush_chain: impl Fn(), listing: impl Fn() -> String) {
    let owned = ALL.owned(&[Family::V4, Family::V6]);
    let old = ALL.rule_set(&networks("10.244.9.0/24"));
    let desired = ALL.rule_set(&networks("10.244.1.0/24"));

    let report = reconcile_rules(rules, &owned, &old).await.unwrap();
    assert!(report.failed.is_empty(), "{:?}", report.failed);
    assert_eq!(rules.observe(&owned).await.unwrap().tables, old.tables, "what was applied reads back as itself");

    // A new subnet (as after a restart with another lease): the old rules are replaced, nothing else changes.
    let report = reconcile_rules(rules, &owned, &desired).await.unwrap();
    assert!(report.failed.is_empty(), "{:?}", report.failed);
    assert_eq!(report.applied, vec![RuleOp::ReplaceTable(desired.tables[&table_id(Family::V4)].clone())]);
    assert_eq!(rules.observe(&owned).await.unwrap().tables, desired.tables);
    assert!(!listing().contains("10.244.9.0"), "{}", listing());
    let report = reconcile_rules(rules, &owned, &desired).await.unwrap();
    assert!(report.applied.is_empty() && report.failed.is_empty(), "a second pass changes nothing: {report:?}");

    flush_chain();
    assert_ne!(rules.observe(&owned).await.unwrap().tables, desired.tables, "a flushed chain is seen");
    let report = reconcile_rules(rules, &owned, &desired).await.unwrap();
    assert_eq!(report.applied.len(), 1, "{report:?}");
    assert_eq!(rules.observe(&owned).await.unwrap().tables, desired.tables);

    let report = reconcile_rules(rules, &owned, &RuleSet::default()).await.unwrap();
    assert_eq!(report.applied.len(), 2, "{report:?}");
    assert!(rules.observe(&owned).await.unwrap().is_empty());
    assert!(!listing().to_lowercase().contains("flannel"), "{}", listing());
}

#[tokio::test]
async fn nftables_holds_reads_back_and_repairs_the_rules() {
    let ns = Netns::create("nft");
    let mut rules = NftRules::in_named_netns(&ns.name);
    lifecycle(
        &mut rules,
        || drop(ns.run(&["nft", "flush", "chain", "ip", "flannel", "POSTRTG"])),
        || ns.run(&["nft", "list", "ruleset"]),
    )
    .await;
}

async fn iptables_lifecycle(variant: IptablesVariant, tag: &str, save: &'static str, save6: &'static str) {
    let ns = Netns::create(tag);
    // flanneld's leftovers: its own jump (with a comment) into FLANNEL-POSTRTG, which we adopt and refill.
    let iptables = save.trim_end_matches("-save");
    ns.run(&[iptables, "-t", "nat", "-N", "FLANNEL-POSTRTG"]);
    ns.run(&[iptables, "-t", "nat", "-A", "FLANNEL-POSTRTG", "-s", "10.99.0.0/16", "-j", "MASQUERADE"]);
    ns.run(&[
        iptables,
        "-t",
        "nat",
        "-A",
        "POSTROUTING",
        "-m",
        "comment",
        "--comment",
        "flanneld masq",
        "-j",
        "FLANNEL-POSTRTG",
    ]);
    let mut rules = IptablesRules::in_named_netns(&ns.name, variant);
    lifecycle(
        &mut rules,
        || drop(ns.run(&[iptables, "-t", "nat", "-F", "FLANNEL-POSTRTG"])),
        || ns.run(&[save]) + &ns.run(&[save6]),
    )
    .await;
}

#[tokio::test]
async fn iptables_legacy_holds_reads_back_and_repairs_the_rules() {
    iptables_lifecycle(IptablesVariant::Legacy, "legacy", "iptables-legacy-save", "ip6tables-legacy-save").await;
}

#[tokio::test]
async fn iptables_nft_holds_reads_back_and_repairs_the_rules() {
    iptables_lifecycle(IptablesVariant::Nft, "ipt-nft", "iptables-nft-save", "ip6tables-nft-save").await;
}

/// nftables only: a forward chain of another table with policy drop gets weft's accepts at its top (an accept in
/// `ip flannel` would end only its own chain), once; they go again when no longer wanted, and the host's own
/// rule stays.
#[tokio::test]
async fn nftables_puts_its_accepts_at_the_top_of_another_tables_dropping_forward_chain() {
    let ns = Netns::create("nftfwd");
    ns.run(&[
        "nft",
        "add table inet filter; \
         add chain inet filter forward { type filter hook forward priority 0; policy drop; }; \
         add rule inet filter forward ct state established,related accept comment \"host rule\"",
    ]);
    let chain = || ns.run(&["nft", "list", "chain", "inet", "filter", "forward"]);
    let mut rules = NftRules::in_named_netns(&ns.name);
    let owned = ALL.owned(&[Family::V4, Family::V6]);
    let desired = ALL.rule_set(&networks("10.244.1.0/24"));
    let report = reconcile_rules(&mut rules, &owned, &desired).await.unwrap();
    assert!(report.failed.is_empty(), "{:?}", report.failed);
    let listing = chain();
    let lines: Vec<&str> = listing.lines().map(str::trim).filter(|l| l.contains("accept")).collect();
    assert_eq!(
        lines,
        vec![
            "ip saddr 10.244.0.0/16 accept comment \"flanneld forward\"",
            "ip daddr 10.244.0.0/16 accept comment \"flanneld forward\"",
            "ip6 saddr fd00:10:244::/56 accept comment \"flanneld forward\"",
            "ip6 daddr fd00:10:244::/56 accept comment \"flanneld forward\"",
            "ct state established,related accept comment \"host rule\"",
        ],
        "{listing}"
    );
    let again = reconcile_rules(&mut rules, &owned, &desired).await.unwrap();
    assert!(again.applied.is_empty() && again.failed.is_empty(), "{again:?}");

    let report = reconcile_rules(&mut rules, &owned, &RuleSet::default()).await.unwrap();
    assert!(report.failed.is_empty(), "{:?}", report.failed);
    let listing = chain();
    assert!(
        !listing.contains("flanneld") && listing.contains("host rule") && listing.contains("policy drop"),
        "{listing}"
    );
}
