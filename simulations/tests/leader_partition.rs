//! The leader is cut off from the majority: the majority elects a leader and takes
//! writes, the cut-off node acknowledges nothing, and after healing every node holds
//! every acknowledged write, with at most one leader per term throughout.

#[test]
fn a_cut_off_leader_is_replaced_and_nothing_acknowledged_is_lost() {
    let report =
        mcpfleet_sim::scenarios::leader_partition(5).unwrap_or_else(|e| panic!("seed 5: {e}"));
    assert!(report
        .events
        .iter()
        .any(|e| e.contains("'during' acknowledged")));
    assert!(report
        .events
        .iter()
        .any(|e| e == "every node holds every acknowledged write"));
}
