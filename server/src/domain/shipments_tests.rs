//! Unit and property tests of the shipment rules.
//!
//! The unit tests take one rule at a time: the cascade, the legs, the status of
//! a delivery, who carries it, who may assign and see it, and what each step
//! does to stock. The property tests then plan random receipts in random
//! networks in memory, the way the server does, and deliver them leg by leg.
//!
//! The network of the unit tests is the fixtures' customer C1: branches B1 and
//! B2, seller S1, plus master warehouse MW and manufacturer MF.

use std::collections::BTreeMap;

use proptest::{prelude::*, sample::Index, test_runner::TestCaseError};
use rstest::rstest;

use super::*;
use crate::domain::fixtures::{customer, principal};

fn node(raw: &str) -> NodeId {
    NodeId::parse(raw).expect("a well-formed node id")
}

fn username(raw: &str) -> Username {
    Username::parse(raw).expect("a well-formed username")
}

fn customer_id(raw: &str) -> CustomerId {
    CustomerId::parse(raw).expect("a well-formed customer id")
}

fn item(raw: &str) -> ItemId {
    ItemId::parse(raw).expect("a well-formed item id")
}

/// Customer C1's cascade in a network with master warehouse MW and manufacturer MF.
fn full_cascade() -> CascadeNodes {
    CascadeNodes::for_customer(&customer("C1"), Some(&node("MW")), Some(&node("MF")))
}

/// Customer C1's cascade in a network with neither a master warehouse nor a manufacturer.
fn bare_cascade() -> CascadeNodes {
    CascadeNodes::for_customer(&customer("C1"), None, None)
}

/// Available stock: the listed quantity at each listed node, nothing elsewhere.
fn stock_at<'a>(levels: &'a [(&'a str, u64)]) -> impl FnMut(&NodeId) -> u64 + 'a {
    move |asked| levels.iter().find(|(name, _)| *name == asked.as_str()).map_or(0, |(_, quantity)| *quantity)
}

// ---------------------------------------------------------------------------
// The cascade
// ---------------------------------------------------------------------------

#[rstest]
#[case::only_at_branch_1("B1", Source::Branch1)]
#[case::only_at_branch_2("B2", Source::Branch2)]
#[case::only_at_the_master_warehouse("MW", Source::MasterWarehouse)]
#[case::only_at_the_seller("S1", Source::Seller)]
#[case::only_at_the_manufacturer("MF", Source::Manufacturer)]
fn the_only_node_that_holds_the_stock_ships_it(#[case] holder: &str, #[case] expected: Source) {
    let levels = [(holder, 5)];

    let found = cascade(&full_cascade(), 5, stock_at(&levels));

    assert_eq!(found, Some((expected, node(holder))));
}

#[rstest]
#[case::branch_1_before_branch_2("B1", "B2", Source::Branch1)]
#[case::branch_1_before_the_master_warehouse("B1", "MW", Source::Branch1)]
#[case::branch_1_before_the_seller("B1", "S1", Source::Branch1)]
#[case::branch_1_before_the_manufacturer("B1", "MF", Source::Branch1)]
#[case::branch_2_before_the_master_warehouse("B2", "MW", Source::Branch2)]
#[case::branch_2_before_the_seller("B2", "S1", Source::Branch2)]
#[case::branch_2_before_the_manufacturer("B2", "MF", Source::Branch2)]
#[case::master_warehouse_before_the_seller("MW", "S1", Source::MasterWarehouse)]
#[case::master_warehouse_before_the_manufacturer("MW", "MF", Source::MasterWarehouse)]
#[case::seller_before_the_manufacturer("S1", "MF", Source::Seller)]
fn of_two_nodes_that_both_cover_the_quantity_the_earlier_in_the_cascade_ships_it(
    #[case] earlier: &str,
    #[case] later: &str,
    #[case] expected: Source,
) {
    // The later node is listed first and holds more, so neither decides.
    let levels = [(later, 50), (earlier, 5)];

    let found = cascade(&full_cascade(), 5, stock_at(&levels));

    assert_eq!(found, Some((expected, node(earlier))));
}

#[test]
fn when_no_node_covers_the_quantity_the_cascade_finds_nothing() {
    let levels = [("B1", 4), ("B2", 4), ("MW", 4), ("S1", 4), ("MF", 4)];

    let found = cascade(&full_cascade(), 5, stock_at(&levels));

    assert_eq!(found, None);
}

#[test]
fn a_node_that_holds_only_part_of_the_quantity_is_skipped() {
    let levels = [("B1", 4), ("B2", 5)];

    let found = cascade(&full_cascade(), 5, stock_at(&levels));

    assert_eq!(found, Some((Source::Branch2, node("B2"))));
}

#[test]
fn the_quantity_is_never_split_across_nodes() {
    let levels = [("B1", 3), ("B2", 2), ("MW", 1), ("S1", 4), ("MF", 4)];

    let found = cascade(&full_cascade(), 5, stock_at(&levels));

    assert_eq!(found, None);
}

#[test]
fn stock_exactly_equal_to_the_quantity_is_enough() {
    let levels = [("B1", 5)];

    let found = cascade(&full_cascade(), 5, stock_at(&levels));

    assert_eq!(found, Some((Source::Branch1, node("B1"))));
}

#[test]
fn the_cascade_asks_the_nodes_in_order_and_stops_at_the_first_that_covers() {
    let mut asked = Vec::new();

    let found = cascade(&full_cascade(), 5, |node: &NodeId| {
        asked.push(node.to_string());
        if node.as_str() == "S1" {
            5
        } else {
            0
        }
    });

    assert_eq!(found, Some((Source::Seller, node("S1"))));
    assert_eq!(asked, ["B1", "B2", "MW", "S1"]);
}

#[test]
fn a_network_without_master_warehouse_or_manufacturer_skips_those_steps() {
    let mut asked = Vec::new();

    let found = cascade(&bare_cascade(), 5, |node: &NodeId| {
        asked.push(node.to_string());
        0
    });

    assert_eq!(found, None);
    assert_eq!(asked, ["B1", "B2", "S1"]);
}

#[test]
fn without_a_master_warehouse_the_seller_comes_right_after_branch_2() {
    // Stock at nodes called MW and MF does not count: this network has neither.
    let levels = [("MW", 50), ("S1", 5), ("MF", 50)];

    let found = cascade(&bare_cascade(), 5, stock_at(&levels));

    assert_eq!(found, Some((Source::Seller, node("S1"))));
}

// ---------------------------------------------------------------------------
// The legs
// ---------------------------------------------------------------------------

/// The legs of delivery D-000001 to customer C1.
fn legs_for(source: Source, nodes: &CascadeNodes) -> Vec<Leg> {
    plan_legs(&DeliveryId::from_seq(1), source, nodes, &customer_id("C1"))
}

/// Each leg as `from -> to`, the customer written `customer C1`.
fn route(legs: &[Leg]) -> Vec<String> {
    legs.iter()
        .map(|leg| match &leg.to {
            Destination::Node(to) => format!("{} -> {to}", leg.from),
            Destination::Customer(to) => format!("{} -> customer {to}", leg.from),
        })
        .collect()
}

#[rstest]
#[case::from_branch_1(Source::Branch1, &["B1 -> customer C1"])]
#[case::from_branch_2(Source::Branch2, &["B2 -> customer C1"])]
#[case::from_the_master_warehouse(Source::MasterWarehouse, &["MW -> B1", "B1 -> customer C1"])]
#[case::from_the_manufacturer(Source::Manufacturer, &["MF -> MW", "MW -> B1", "B1 -> customer C1"])]
#[case::from_the_seller(Source::Seller, &["S1 -> customer C1"])]
fn the_legs_follow_the_flow_of_the_goods_to_the_customer(#[case] source: Source, #[case] expected: &[&str]) {
    let legs = legs_for(source, &full_cascade());

    assert_eq!(route(&legs), expected);
}

#[test]
fn without_a_master_warehouse_the_manufacturer_ships_to_branch_1() {
    let nodes = CascadeNodes::for_customer(&customer("C1"), None, Some(&node("MF")));

    let legs = legs_for(Source::Manufacturer, &nodes);

    assert_eq!(route(&legs), ["MF -> B1", "B1 -> customer C1"]);
}

#[test]
fn legs_are_numbered_from_l1_in_the_flow_of_the_goods() {
    let legs = legs_for(Source::Manufacturer, &full_cascade());

    let ids: Vec<&str> = legs.iter().map(|leg| leg.leg_id.as_str()).collect();
    assert_eq!(ids, ["D-000001-L1", "D-000001-L2", "D-000001-L3"]);
}

#[rstest]
fn every_leg_starts_planned_and_not_yet_issued(
    #[values(Source::Branch1, Source::Branch2, Source::MasterWarehouse, Source::Seller, Source::Manufacturer)]
    source: Source,
) {
    let legs = legs_for(source, &full_cascade());

    assert!(!legs.is_empty());
    for leg in &legs {
        assert_eq!((leg.status, leg.issued_at), (LegStatus::Planned, None), "{}", leg.leg_id);
    }
}

// ---------------------------------------------------------------------------
// A delivery's status and delivering node
// ---------------------------------------------------------------------------

/// Delivery D-000001 of 2 units of TC to customer C1, planned from `source`,
/// open and unassigned. Distributor deliveries are carried from the branch the
/// last leg leaves; seller deliveries are entrusted to S1.
fn delivery(source: Source) -> Delivery {
    let nodes = full_cascade();
    let delivery_id = DeliveryId::from_seq(1);
    let legs = plan_legs(&delivery_id, source, &nodes, &customer_id("C1"));
    let carrier = match source {
        Source::Branch1 | Source::MasterWarehouse | Source::Manufacturer => Carrier::Distributor { branch: node("B1") },
        Source::Branch2 => Carrier::Distributor { branch: node("B2") },
        Source::Seller => Carrier::Seller { seller: node("S1") },
    };
    Delivery {
        delivery_id,
        receipt_id: ReceiptId::from_seq(1),
        customer_id: customer_id("C1"),
        item_id: item("TC"),
        quantity: 2,
        source,
        source_node: nodes.node(source).expect("the full network has every source").clone(),
        legs,
        carrier,
        assignee: None,
        version: 1,
        assignments: Vec::new(),
        state: DeliveryState::Open,
        planned_at: OffsetDateTime::UNIX_EPOCH,
        attempts: Vec::new(),
        cancellation: None,
        reversals: Vec::new(),
        follow_up_of: None,
        handover_code_hash: None,
    }
}

/// What a pull reads of `delivery` once stored.
fn card_of(delivery: &Delivery) -> DeliveryCard {
    serde_json::from_slice(&serde_json::to_vec(delivery).expect("a delivery encodes")).expect("a card decodes")
}

#[rstest]
fn a_pull_reads_what_the_courier_is_shown_of_a_stored_delivery(
    #[values(Source::Branch1, Source::Seller, Source::MasterWarehouse, Source::Manufacturer)] source: Source,
) {
    let mut delivery = issue(delivery(source), &[0]);
    delivery.assignee = Some(username("exp-1"));
    delivery.version = 3;
    delivery.assignments.push(Assignment {
        version: 3,
        assignee: delivery.assignee.clone(),
        at: OffsetDateTime::UNIX_EPOCH,
        by: "planner".into(),
    });

    let card = card_of(&delivery);

    assert_eq!(
        (&card.delivery_id, &card.receipt_id, &card.customer_id, &card.item_id),
        (&delivery.delivery_id, &delivery.receipt_id, &delivery.customer_id, &delivery.item_id)
    );
    assert_eq!((card.quantity, card.version, &card.assignee), (2, 3, &delivery.assignee));
    assert_eq!(card.delivering_node(), delivery.delivering_node());
    assert_eq!(card.status(), delivery.status());
}

/// Marks the legs at `positions` as issued.
fn issue(mut delivery: Delivery, positions: &[usize]) -> Delivery {
    for &position in positions {
        let leg = &mut delivery.legs[position];
        leg.status = LegStatus::Issued;
        leg.issued_at = Some(OffsetDateTime::UNIX_EPOCH);
    }
    delivery
}

#[rstest]
#[case::from_a_branch_at_once(Source::Branch1, &[], DeliveryStatus::Ready)]
#[case::from_the_seller_at_once(Source::Seller, &[], DeliveryStatus::Ready)]
#[case::from_the_master_warehouse_before_its_transfer(Source::MasterWarehouse, &[], DeliveryStatus::Upcoming)]
#[case::from_the_master_warehouse_after_its_transfer(Source::MasterWarehouse, &[0], DeliveryStatus::Ready)]
#[case::from_the_manufacturer_before_any_transfer(Source::Manufacturer, &[], DeliveryStatus::Upcoming)]
#[case::from_the_manufacturer_after_the_first_transfer(Source::Manufacturer, &[0], DeliveryStatus::Upcoming)]
#[case::from_the_manufacturer_with_only_the_second_transfer(Source::Manufacturer, &[1], DeliveryStatus::Upcoming)]
#[case::from_the_manufacturer_after_both_transfers(Source::Manufacturer, &[0, 1], DeliveryStatus::Ready)]
fn an_open_delivery_is_upcoming_until_every_transfer_leg_is_issued(
    #[case] source: Source,
    #[case] issued: &[usize],
    #[case] expected: DeliveryStatus,
) {
    let delivery = issue(delivery(source), issued);

    assert_eq!(delivery.status(), expected);
    assert_eq!(card_of(&delivery).status(), expected, "a pull reads the same status");
}

#[rstest]
#[case::delivered(DeliveryState::Delivered, DeliveryStatus::Delivered)]
#[case::cancelled(DeliveryState::Cancelled, DeliveryStatus::Cancelled)]
fn a_closed_delivery_shows_its_state_whatever_its_legs(#[case] state: DeliveryState, #[case] expected: DeliveryStatus) {
    let mut delivery = delivery(Source::Manufacturer);
    delivery.state = state;

    assert_eq!(delivery.status(), expected);
    assert_eq!(card_of(&delivery).status(), expected, "a pull reads the same status");
    assert!(!delivery.is_open());
}

#[rstest]
#[case::from_branch_1(Source::Branch1, "B1")]
#[case::from_branch_2(Source::Branch2, "B2")]
#[case::from_the_master_warehouse(Source::MasterWarehouse, "B1")]
#[case::from_the_manufacturer(Source::Manufacturer, "B1")]
#[case::from_the_seller(Source::Seller, "S1")]
fn the_courier_picks_the_goods_up_where_the_last_leg_starts(#[case] source: Source, #[case] expected: &str) {
    let delivery = delivery(source);

    assert_eq!(delivery.delivering_node(), &node(expected));
}

// ---------------------------------------------------------------------------
// Choosing a courier
// ---------------------------------------------------------------------------

#[test]
fn the_courier_with_the_fewest_open_deliveries_is_chosen() {
    let (ann, bob, cy) = (username("ann"), username("bob"), username("cy"));

    let chosen = choose_courier([(&ann, 3), (&bob, 1), (&cy, 2)]);

    assert_eq!(chosen, Some(bob));
}

#[test]
fn between_equally_loaded_couriers_the_first_username_is_chosen_whatever_the_order() {
    let (amy, max, zoe) = (username("amy"), username("max"), username("zoe"));

    let forwards = choose_courier([(&amy, 1), (&max, 1), (&zoe, 1)]);
    let backwards = choose_courier([(&zoe, 1), (&max, 1), (&amy, 1)]);

    assert_eq!(forwards, Some(amy.clone()));
    assert_eq!(backwards, Some(amy));
}

#[test]
fn a_lighter_load_wins_over_an_earlier_username() {
    let (amy, zoe) = (username("amy"), username("zoe"));

    let chosen = choose_courier([(&amy, 2), (&zoe, 0)]);

    assert_eq!(chosen, Some(zoe));
}

#[test]
fn without_candidates_no_courier_is_chosen() {
    let chosen = choose_courier(std::iter::empty::<(&Username, u64)>());

    assert_eq!(chosen, None);
}

// ---------------------------------------------------------------------------
// Who may assign a delivery, and to whom
// ---------------------------------------------------------------------------

/// A signed-in account.
fn acting(role: Role, name: &str, node_id: Option<&str>) -> Principal {
    Principal { username: username(name), node_id: node_id.map(node), ..principal(role, None) }
}

fn dispatcher() -> Principal {
    acting(Role::Dispatcher, "disp", None)
}

/// The seller account of seller node `seller`.
fn seller_of(seller: &str) -> Principal {
    acting(Role::Seller, &format!("rep-{seller}"), Some(seller))
}

/// A courier account, as the store knows it.
fn courier(role: Role, name: &str, node_id: Option<&str>) -> CourierAccount {
    CourierAccount { username: username(name), role, node_id: node_id.map(node) }
}

fn expediter(name: &str, branch: &str) -> CourierAccount {
    courier(Role::Expediter, name, Some(branch))
}

fn serviceman(name: &str, seller: &str) -> CourierAccount {
    courier(Role::Serviceman, name, Some(seller))
}

/// Carried by an expediter of B1.
fn from_branch_1() -> Delivery {
    delivery(Source::Branch1)
}

/// Entrusted to seller S1.
fn entrusted() -> Delivery {
    delivery(Source::Seller)
}

fn closed(mut delivery: Delivery, state: DeliveryState) -> Delivery {
    delivery.state = state;
    delivery
}

#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    Allowed,
    NotAllowed,
    WrongCourier,
    Closed,
}

fn verdict(result: Result<(), AssignRefusal>) -> Verdict {
    match result {
        Ok(()) => Verdict::Allowed,
        Err(AssignRefusal::NotAllowed(_)) => Verdict::NotAllowed,
        Err(AssignRefusal::WrongCourier { .. }) => Verdict::WrongCourier,
        Err(AssignRefusal::Closed(..)) => Verdict::Closed,
    }
}

#[rstest]
#[case::dispatcher_to_an_expediter_of_the_delivering_branch(
    dispatcher(),
    from_branch_1(),
    expediter("exp1", "B1"),
    Verdict::Allowed
)]
#[case::dispatcher_to_an_expediter_of_branch_1_after_transfers(
    dispatcher(),
    delivery(Source::Manufacturer),
    expediter("exp1", "B1"),
    Verdict::Allowed
)]
#[case::dispatcher_to_an_expediter_of_another_branch(
    dispatcher(),
    from_branch_1(),
    expediter("exp2", "B2"),
    Verdict::WrongCourier
)]
#[case::dispatcher_to_a_serviceman_for_a_distributor_delivery(
    dispatcher(),
    from_branch_1(),
    serviceman("svc1", "S1"),
    Verdict::WrongCourier
)]
#[case::dispatcher_to_the_sellers_serviceman_for_an_entrusted_delivery(
    dispatcher(),
    entrusted(),
    serviceman("svc1", "S1"),
    Verdict::Allowed
)]
#[case::dispatcher_to_an_expediter_for_an_entrusted_delivery(
    dispatcher(),
    entrusted(),
    expediter("exp1", "B1"),
    Verdict::WrongCourier
)]
#[case::dispatcher_to_an_account_that_is_no_courier(
    dispatcher(),
    from_branch_1(),
    courier(Role::Dispatcher, "disp", None),
    Verdict::WrongCourier
)]
#[case::dispatcher_on_a_delivered_delivery(
    dispatcher(),
    closed(from_branch_1(), DeliveryState::Delivered),
    expediter("exp1", "B1"),
    Verdict::Closed
)]
#[case::dispatcher_on_a_cancelled_delivery(
    dispatcher(),
    closed(from_branch_1(), DeliveryState::Cancelled),
    expediter("exp1", "B1"),
    Verdict::Closed
)]
#[case::seller_to_its_own_serviceman(seller_of("S1"), entrusted(), serviceman("svc1", "S1"), Verdict::Allowed)]
#[case::seller_to_another_sellers_serviceman(
    seller_of("S1"),
    entrusted(),
    serviceman("svc2", "S2"),
    Verdict::WrongCourier
)]
#[case::seller_to_an_expediter(seller_of("S1"), entrusted(), expediter("exp1", "B1"), Verdict::WrongCourier)]
#[case::seller_on_another_sellers_delivery(seller_of("S2"), entrusted(), serviceman("svc2", "S2"), Verdict::NotAllowed)]
#[case::seller_on_a_distributor_delivery(
    seller_of("S1"),
    from_branch_1(),
    expediter("exp1", "B1"),
    Verdict::NotAllowed
)]
#[case::seller_on_its_delivered_delivery(
    seller_of("S1"),
    closed(entrusted(), DeliveryState::Delivered),
    serviceman("svc1", "S1"),
    Verdict::Closed
)]
#[case::seller_without_a_node(
    acting(Role::Seller, "rep", None),
    entrusted(),
    serviceman("svc1", "S1"),
    Verdict::NotAllowed
)]
#[case::expediter(
    acting(Role::Expediter, "exp1", Some("B1")),
    from_branch_1(),
    expediter("exp1", "B1"),
    Verdict::NotAllowed
)]
#[case::serviceman(
    acting(Role::Serviceman, "svc1", Some("S1")),
    entrusted(),
    serviceman("svc1", "S1"),
    Verdict::NotAllowed
)]
#[case::customer(principal(Role::Customer, Some("C1")), from_branch_1(), expediter("exp1", "B1"), Verdict::NotAllowed)]
#[case::admin(principal(Role::Admin, None), from_branch_1(), expediter("exp1", "B1"), Verdict::NotAllowed)]
fn who_may_assign_a_delivery_and_to_whom(
    #[case] by: Principal,
    #[case] delivery: Delivery,
    #[case] courier: CourierAccount,
    #[case] expected: Verdict,
) {
    let result = check_assignment(&delivery, &by, &courier);

    assert_eq!(verdict(result), expected);
}

#[test]
fn a_courier_who_tries_to_assign_is_told_it_may_not() {
    let by = acting(Role::Expediter, "exp1", Some("B1"));

    let refusal =
        check_assignment(&from_branch_1(), &by, &expediter("exp1", "B1")).expect_err("couriers do not assign");

    assert_eq!(refusal.to_string(), "expediter exp1 may not assign delivery D-000001");
}

#[test]
fn a_serviceman_of_another_seller_is_refused_with_who_is_needed() {
    let refusal = check_assignment(&entrusted(), &seller_of("S1"), &serviceman("svc2", "S2"))
        .expect_err("S2's serviceman cannot carry for S1");

    assert_eq!(
        refusal.to_string(),
        "svc2 cannot carry this delivery: it needs a serviceman of S1, and svc2 is a serviceman of S2"
    );
}

#[test]
fn an_account_without_a_node_is_refused_as_belonging_to_no_node() {
    let refusal = check_assignment(&entrusted(), &dispatcher(), &courier(Role::Dispatcher, "disp", None))
        .expect_err("a dispatcher account carries nothing");

    assert_eq!(
        refusal.to_string(),
        "disp cannot carry this delivery: it needs a serviceman of S1, and disp is a dispatcher of no node"
    );
}

#[test]
fn an_expediter_of_another_branch_is_refused_naming_both_branches() {
    let refusal = check_assignment(&from_branch_1(), &dispatcher(), &expediter("exp2", "B2"))
        .expect_err("B2's expediter cannot carry from B1");

    assert_eq!(
        refusal,
        AssignRefusal::WrongCourier {
            assignee: username("exp2"),
            reason: "it needs an expediter of B1, and exp2 is an expediter of B2".into(),
        }
    );
    assert_eq!(
        refusal.to_string(),
        "exp2 cannot carry this delivery: it needs an expediter of B1, and exp2 is an expediter of B2"
    );
}

#[test]
fn a_delivered_delivery_can_no_longer_be_assigned() {
    let delivered = closed(from_branch_1(), DeliveryState::Delivered);

    let refusal = check_assignment(&delivered, &dispatcher(), &expediter("exp1", "B1"))
        .expect_err("a closed delivery stays closed");

    assert_eq!(refusal, AssignRefusal::Closed(DeliveryId::from_seq(1), DeliveryStatus::Delivered));
    assert_eq!(refusal.to_string(), "delivery D-000001 is delivered and can no longer be assigned");
}

#[test]
fn who_may_not_assign_is_told_so_before_whether_the_delivery_is_closed() {
    let delivered = closed(entrusted(), DeliveryState::Delivered);

    let refusal = check_assignment(&delivered, &seller_of("S2"), &serviceman("svc2", "S2")).expect_err("not S2's");

    assert_eq!(verdict(Err(refusal)), Verdict::NotAllowed);
}

// ---------------------------------------------------------------------------
// Who sees a delivery
// ---------------------------------------------------------------------------

fn assigned_to(mut delivery: Delivery, name: &str) -> Delivery {
    delivery.assignee = Some(username(name));
    delivery
}

#[rstest]
#[case::a_dispatcher(dispatcher(), from_branch_1(), true)]
#[case::a_dispatcher_an_entrusted_one(dispatcher(), entrusted(), true)]
#[case::the_assigned_expediter(acting(Role::Expediter, "exp1", Some("B1")), assigned_to(from_branch_1(), "exp1"), true)]
#[case::another_expediter_of_the_same_branch(
    acting(Role::Expediter, "exp2", Some("B1")),
    assigned_to(from_branch_1(), "exp1"),
    false
)]
#[case::an_expediter_of_the_branch_while_unassigned(
    acting(Role::Expediter, "exp1", Some("B1")),
    from_branch_1(),
    false
)]
#[case::the_assigned_serviceman(acting(Role::Serviceman, "svc1", Some("S1")), assigned_to(entrusted(), "svc1"), true)]
#[case::another_serviceman_of_the_same_seller(
    acting(Role::Serviceman, "svc2", Some("S1")),
    assigned_to(entrusted(), "svc1"),
    false
)]
#[case::the_seller_it_is_entrusted_to(seller_of("S1"), entrusted(), true)]
#[case::another_seller(seller_of("S2"), entrusted(), false)]
#[case::the_customers_seller_for_a_distributor_delivery(seller_of("S1"), from_branch_1(), false)]
#[case::the_customer_it_goes_to(principal(Role::Customer, Some("C1")), from_branch_1(), false)]
#[case::an_admin(principal(Role::Admin, None), from_branch_1(), false)]
fn who_sees_a_delivery(#[case] who: Principal, #[case] delivery: Delivery, #[case] visible: bool) {
    assert_eq!(delivery.visible_to(&who), visible);
}

#[test]
fn a_courier_who_may_not_see_a_delivery_is_told_it_does_not_exist() {
    let other = acting(Role::Expediter, "exp2", Some("B1"));

    let refused = other.ensure_can_see(&assigned_to(from_branch_1(), "exp1")).expect_err("not exp2's delivery");

    assert_eq!(refused.to_string(), "no delivery D-000001");
}

// ---------------------------------------------------------------------------
// Stock effects
// ---------------------------------------------------------------------------

fn balance(on_hand: u64, reserved: u64) -> Balance {
    Balance { on_hand, reserved }
}

#[test]
fn reserving_promises_stock_without_moving_it() {
    let b1 = node("B1");

    let [effect] = reserve(&b1, 4);

    assert_eq!(effect.node, &b1);
    assert_eq!(effect.apply(balance(10, 3)), Ok(balance(10, 7)));
}

#[test]
fn reserving_more_than_is_available_is_refused() {
    let b1 = node("B1");

    let [effect] = reserve(&b1, 4);

    assert_eq!(effect.apply(balance(10, 7)), Err(NegativeStock));
}

#[test]
fn a_transfer_moves_reserved_goods_and_keeps_them_reserved_at_the_next_node() {
    let (mw, b1) = (node("MW"), node("B1"));

    let [leaving, arriving] = transfer(&mw, &b1, 4);

    assert_eq!((leaving.node, arriving.node), (&mw, &b1));
    assert_eq!(leaving.apply(balance(10, 4)), Ok(balance(6, 0)));
    assert_eq!(arriving.apply(balance(1, 0)), Ok(balance(5, 4)));
}

#[test]
fn a_transfer_of_goods_that_were_not_reserved_is_refused() {
    let (mw, b1) = (node("MW"), node("B1"));

    let [leaving, _] = transfer(&mw, &b1, 4);

    assert_eq!(leaving.apply(balance(10, 3)), Err(NegativeStock));
}

#[test]
fn a_transfer_of_more_than_is_on_hand_is_refused() {
    let (mw, b1) = (node("MW"), node("B1"));

    let [leaving, _] = transfer(&mw, &b1, 4);

    assert_eq!(leaving.apply(balance(3, 3)), Err(NegativeStock));
}

#[test]
fn handing_over_takes_the_reserved_goods_off_the_delivering_node() {
    let b1 = node("B1");

    let [effect] = hand_over(&b1, 4);

    assert_eq!(effect.node, &b1);
    assert_eq!(effect.apply(balance(5, 4)), Ok(balance(1, 0)));
}

#[rstest]
#[case::less_reserved_than_handed_over(balance(5, 2))]
#[case::less_on_hand_than_handed_over(balance(3, 3))]
#[case::nothing_there(balance(0, 0))]
fn handing_over_more_than_is_reserved_is_refused(#[case] before: Balance) {
    let b1 = node("B1");

    let [effect] = hand_over(&b1, 4);

    assert_eq!(effect.apply(before), Err(NegativeStock));
}

/// Stock of every (node, item).
type Stock = BTreeMap<(NodeId, ItemId), Balance>;

/// Applies the effects of one step to the stock of `item`, all or nothing.
fn apply_effects(stock: &mut Stock, item: &ItemId, effects: &[StockEffect<'_>]) -> Result<(), NegativeStock> {
    let mut next = stock.clone();
    for effect in effects {
        let key = (effect.node.clone(), item.clone());
        let before = next.get(&key).copied().unwrap_or_default();
        next.insert(key, effect.apply(before)?);
    }
    *stock = next;
    Ok(())
}

fn on_hand_in_total(stock: &Stock) -> u64 {
    stock.values().map(|balance| balance.on_hand).sum()
}

#[test]
fn a_delivery_from_the_manufacturer_ends_with_the_goods_off_the_network_and_nothing_reserved() {
    let tc = item("TC");
    let at = |name: &str, on_hand, reserved| ((node(name), tc.clone()), balance(on_hand, reserved));
    let mut stock: Stock = [at("MF", 10, 0), at("MW", 2, 0), at("B1", 1, 1)].into_iter().collect();
    let legs = legs_for(Source::Manufacturer, &full_cascade());

    apply_effects(&mut stock, &tc, &reserve(&legs[0].from, 4)).expect("MF has 10 available");
    for leg in &legs[..legs.len() - 1] {
        let Destination::Node(next) = &leg.to else { panic!("{} is a transfer leg", leg.leg_id) };
        apply_effects(&mut stock, &tc, &transfer(&leg.from, next, 4)).expect("the goods were reserved");
    }
    let delivering = &legs[legs.len() - 1].from;
    apply_effects(&mut stock, &tc, &hand_over(delivering, 4)).expect("the goods arrived reserved");

    let expected: Stock = [at("MF", 6, 0), at("MW", 2, 0), at("B1", 1, 1)].into_iter().collect();
    assert_eq!(stock, expected);
    assert_eq!(on_hand_in_total(&stock), 13 - 4);
}

#[test]
fn a_step_that_would_go_negative_changes_nothing() {
    let tc = item("TC");
    let (mw, b1) = (node("MW"), node("B1"));
    let mut stock: Stock = [((mw.clone(), tc.clone()), balance(3, 3))].into_iter().collect();
    let before = stock.clone();

    let result = apply_effects(&mut stock, &tc, &transfer(&mw, &b1, 4));

    assert_eq!(result, Err(NegativeStock));
    assert_eq!(stock, before);
}

// ---------------------------------------------------------------------------
// Property tests: planning and delivering in memory
// ---------------------------------------------------------------------------

/// A random network: branches B1.., sellers S1.., maybe MW and MF, items I1..,
/// customers C1.. each with two distinct branches and a seller.
#[derive(Debug, Clone)]
struct Network {
    branches: Vec<NodeId>,
    sellers: Vec<NodeId>,
    master: Option<NodeId>,
    manufacturer: Option<NodeId>,
    items: Vec<ItemId>,
    customers: Vec<Customer>,
}

impl Network {
    fn nodes(&self) -> Vec<NodeId> {
        let mut nodes = self.branches.clone();
        nodes.extend(self.sellers.iter().cloned());
        nodes.extend(self.master.iter().cloned());
        nodes.extend(self.manufacturer.iter().cloned());
        nodes
    }

    fn cascade_of(&self, customer: &Customer) -> CascadeNodes {
        CascadeNodes::for_customer(customer, self.master.as_ref(), self.manufacturer.as_ref())
    }
}

/// What happens to the network, in order. Indices point into the network's lists.
#[derive(Debug, Clone)]
enum Event {
    /// A confirmed order: an order receipt waiting to be planned.
    Receipt { customer: usize, item: usize, quantity: u32 },
    /// Goods arriving at a node from outside the network.
    GoodsReceipt { node: usize, item: usize, quantity: u32 },
}

#[derive(Debug, Clone)]
struct Scenario {
    network: Network,
    stock: Stock,
    events: Vec<Event>,
}

fn named<T>(prefix: &str, count: usize, parse: impl Fn(&str) -> T) -> Vec<T> {
    (1..=count).map(|n| parse(&format!("{prefix}{n}"))).collect()
}

fn networks() -> impl Strategy<Value = Network> {
    (2usize..=6, 1usize..=3, any::<bool>(), any::<bool>(), 1usize..=3)
        .prop_flat_map(|(branches, sellers, master, manufacturer, items)| {
            // Branch #2 is branch #1 plus a non-zero offset, round the branches.
            let customer = (0..branches, 1..branches, 0..sellers);
            (Just((branches, sellers, master, manufacturer, items)), prop::collection::vec(customer, 1..=8))
        })
        .prop_map(|((branches, sellers, master, manufacturer, items), customers)| {
            let branches = named("B", branches, node);
            let sellers = named("S", sellers, node);
            let customers = customers
                .into_iter()
                .enumerate()
                .map(|(index, (branch_1, offset, seller))| Customer {
                    id: customer_id(&format!("C{}", index + 1)),
                    name: "Office".into(),
                    branch_1: branches[branch_1].clone(),
                    branch_2: branches[(branch_1 + offset) % branches.len()].clone(),
                    seller_id: sellers[seller].clone(),
                })
                .collect();
            Network {
                branches,
                sellers,
                master: master.then(|| node("MW")),
                manufacturer: manufacturer.then(|| node("MF")),
                items: named("I", items, item),
                customers,
            }
        })
}

fn scenarios() -> impl Strategy<Value = Scenario> {
    networks()
        .prop_flat_map(|network| {
            let (nodes, items, customers) = (network.nodes().len(), network.items.len(), network.customers.len());
            let initial = prop::collection::vec(0u64..30, nodes * items);
            let event = prop_oneof![
                3 => (0..customers, 0..items, 1u32..=15)
                    .prop_map(|(customer, item, quantity)| Event::Receipt { customer, item, quantity }),
                1 => (0..nodes, 0..items, 1u32..=20)
                    .prop_map(|(node, item, quantity)| Event::GoodsReceipt { node, item, quantity }),
            ];
            (Just(network), initial, prop::collection::vec(event, 0..40))
        })
        .prop_map(|(network, initial, events)| {
            let keys = network.nodes().into_iter().flat_map(|node| {
                network.items.iter().map(move |item| (node.clone(), item.clone())).collect::<Vec<_>>()
            });
            let stock = keys.zip(initial).map(|(key, on_hand)| (key, balance(on_hand, 0))).collect();
            Scenario { network, stock, events }
        })
}

/// An order receipt as the in-memory planner sees it; `seq` is its receipt order.
#[derive(Debug, Clone)]
struct Order {
    seq: u64,
    customer: Customer,
    item: ItemId,
    quantity: u32,
}

/// A receipt the planner shipped, and where from.
#[derive(Debug, Clone)]
struct Planned {
    order: Order,
    source: Source,
    node: NodeId,
}

/// The oracle: the SPEC's cascade written out again, independently of
/// `cascade`. Every node of the customer's cascade whose available stock covers
/// the whole quantity, in the SPEC's order, named as `Source::as_str` names them.
fn nodes_that_cover(network: &Network, order: &Order, stock: &Stock) -> Vec<(&'static str, NodeId)> {
    let steps = [
        ("branch_1", Some(&order.customer.branch_1)),
        ("branch_2", Some(&order.customer.branch_2)),
        ("master_warehouse", network.master.as_ref()),
        ("seller", Some(&order.customer.seller_id)),
        ("manufacturer", network.manufacturer.as_ref()),
    ];
    steps
        .into_iter()
        .filter_map(|(label, node)| node.map(|node| (label, node.clone())))
        .filter(|(_, node)| {
            let Balance { on_hand, reserved } =
                stock.get(&(node.clone(), order.item.clone())).copied().unwrap_or_default();
            on_hand.checked_sub(reserved).is_some_and(|free| free >= u64::from(order.quantity))
        })
        .collect()
}

fn available(stock: &Stock, node: &NodeId, item: &ItemId) -> u64 {
    stock.get(&(node.clone(), item.clone())).copied().unwrap_or_default().available()
}

/// The planning side of the server, in memory.
#[derive(Debug)]
struct Planner<'n> {
    network: &'n Network,
    stock: Stock,
    planned: Vec<Planned>,
    /// Waiting receipts, in receipt order.
    backorders: Vec<Order>,
    receipts: u64,
}

impl<'n> Planner<'n> {
    fn new(scenario: &'n Scenario) -> Self {
        Planner {
            network: &scenario.network,
            stock: scenario.stock.clone(),
            planned: Vec::new(),
            backorders: Vec::new(),
            receipts: 0,
        }
    }

    /// Plans one receipt like the server: the cascade picks the node and the
    /// stock is reserved there at once. Checks the choice against the oracle.
    /// Returns whether it was planned.
    fn plan(&mut self, order: &Order) -> Result<bool, TestCaseError> {
        let covering = nodes_that_cover(self.network, order, &self.stock);
        let nodes = self.network.cascade_of(&order.customer);

        let found = cascade(&nodes, u64::from(order.quantity), |node| available(&self.stock, node, &order.item));

        // (c) and (d): the first node that covers it, or none when none covers it.
        let chosen = found.as_ref().map(|(source, node)| (source.as_str(), node.clone()));
        prop_assert_eq!(
            &chosen,
            &covering.first().cloned(),
            "receipt {:?}; nodes that cover it: {:?}",
            order,
            covering
        );
        let Some((source, node)) = found else {
            return Ok(false);
        };
        apply_effects(&mut self.stock, &order.item, &reserve(&node, order.quantity))
            .map_err(|err| TestCaseError::fail(format!("reserving {order:?} at {node}: {err}")))?;
        self.planned.push(Planned { order: order.clone(), source, node });
        Ok(true)
    }

    fn receipt(&mut self, customer: usize, item: usize, quantity: u32) -> Result<(), TestCaseError> {
        self.receipts += 1;
        let order = Order {
            seq: self.receipts,
            customer: self.network.customers[customer].clone(),
            item: self.network.items[item].clone(),
            quantity,
        };
        if !self.plan(&order)? {
            self.backorders.push(order);
        }
        Ok(())
    }

    /// Goods arrive; then the waiting receipts are planned again, in receipt order.
    fn goods_receipt(&mut self, node: usize, item: usize, quantity: u32) -> Result<(), TestCaseError> {
        let key = (self.network.nodes()[node].clone(), self.network.items[item].clone());
        let before = self.stock.get(&key).copied().unwrap_or_default();
        let after = before
            .apply(i64::from(quantity), 0)
            .map_err(|err| TestCaseError::fail(format!("goods receipt at {key:?}: {err}")))?;
        self.stock.insert(key, after);
        for order in std::mem::take(&mut self.backorders) {
            if !self.plan(&order)? {
                self.backorders.push(order);
            }
        }
        Ok(())
    }

    fn run(&mut self, events: &[Event]) -> Result<(), TestCaseError> {
        for event in events {
            match *event {
                Event::Receipt { customer, item, quantity } => self.receipt(customer, item, quantity)?,
                Event::GoodsReceipt { node, item, quantity } => self.goods_receipt(node, item, quantity)?,
            }
            self.check_balances()?;
        }
        Ok(())
    }

    /// (a) and (b), after every event.
    fn check_balances(&self) -> Result<(), TestCaseError> {
        // (a) No balance promises more than it holds.
        for (key, balance) in &self.stock {
            prop_assert!(balance.reserved <= balance.on_hand, "{:?}: {:?}", key, balance);
        }
        // (b) Every reservation made is held exactly once, where it was made.
        let mut promised: BTreeMap<(NodeId, ItemId), u64> = BTreeMap::new();
        for planned in &self.planned {
            *promised.entry((planned.node.clone(), planned.order.item.clone())).or_default() +=
                u64::from(planned.order.quantity);
        }
        let reserved: BTreeMap<(NodeId, ItemId), u64> = self
            .stock
            .iter()
            .filter(|(_, balance)| balance.reserved > 0)
            .map(|(key, balance)| (key.clone(), balance.reserved))
            .collect();
        prop_assert_eq!(&promised, &reserved);
        // No receipt lost or planned twice; backorders stay in receipt order.
        let mut seen: Vec<u64> = self
            .planned
            .iter()
            .map(|planned| planned.order.seq)
            .chain(self.backorders.iter().map(|order| order.seq))
            .collect();
        seen.sort_unstable();
        prop_assert_eq!(seen, (1..=self.receipts).collect::<Vec<_>>());
        prop_assert!(self.backorders.windows(2).all(|pair| pair[0].seq < pair[1].seq));
        Ok(())
    }
}

/// How far a planned delivery has got: `done` legs are behind it.
#[derive(Debug)]
struct OnItsWay {
    delivery: Delivery,
    done: usize,
}

impl OnItsWay {
    fn new(network: &Network, planned: &Planned) -> Self {
        let order = &planned.order;
        let delivery_id = DeliveryId::from_seq(order.seq);
        let nodes = network.cascade_of(&order.customer);
        let legs = plan_legs(&delivery_id, planned.source, &nodes, &order.customer.id);
        let delivering = legs.last().map_or_else(|| planned.node.clone(), |leg| leg.from.clone());
        let carrier = match planned.source {
            Source::Seller => Carrier::Seller { seller: delivering },
            _ => Carrier::Distributor { branch: delivering },
        };
        let delivery = Delivery {
            delivery_id,
            receipt_id: ReceiptId::from_seq(order.seq),
            customer_id: order.customer.id.clone(),
            item_id: order.item.clone(),
            quantity: order.quantity,
            source: planned.source,
            source_node: planned.node.clone(),
            legs,
            carrier,
            assignee: None,
            version: 1,
            assignments: Vec::new(),
            state: DeliveryState::Open,
            planned_at: OffsetDateTime::UNIX_EPOCH,
            attempts: Vec::new(),
            cancellation: None,
            reversals: Vec::new(),
            follow_up_of: None,
            handover_code_hash: None,
        };
        OnItsWay { delivery, done: 0 }
    }

    /// Where the goods are now.
    fn at(&self) -> &NodeId {
        &self.delivery.legs[self.done].from
    }
}

/// The legs of a planned delivery chain from the node that reserved the stock
/// to its customer through the nodes the SPEC names, and only the last one goes
/// to the customer.
fn check_route(network: &Network, planned: &Planned, delivery: &Delivery) -> Result<(), TestCaseError> {
    let customer = &planned.order.customer;
    let expected_stops: Vec<&NodeId> = match planned.source {
        Source::Branch1 => vec![&customer.branch_1],
        Source::Branch2 => vec![&customer.branch_2],
        Source::MasterWarehouse => network.master.iter().chain([&customer.branch_1]).collect(),
        Source::Seller => vec![&customer.seller_id],
        Source::Manufacturer => {
            network.manufacturer.iter().chain(network.master.iter()).chain([&customer.branch_1]).collect()
        }
    };
    let legs = &delivery.legs;
    let stops: Vec<&NodeId> = legs.iter().map(|leg| &leg.from).collect();
    prop_assert_eq!(stops, expected_stops, "from {}", planned.source.as_str());
    prop_assert_eq!(&legs[0].from, &planned.node);
    for (position, pair) in legs.windows(2).enumerate() {
        prop_assert_eq!(&pair[0].to, &Destination::Node(pair[1].from.clone()), "leg {}", position + 1);
    }
    prop_assert_eq!(&legs[legs.len() - 1].to, &Destination::Customer(customer.id.clone()));
    let delivering = delivery.delivering_node();
    prop_assert!(
        [&customer.branch_1, &customer.branch_2, &customer.seller_id].contains(&delivering),
        "{} delivers to {}",
        delivering,
        customer.id
    );
    for (position, leg) in legs.iter().enumerate() {
        prop_assert_eq!(leg.leg_id.as_str(), format!("D-{:06}-L{}", planned.order.seq, position + 1));
        prop_assert_eq!(leg.status, LegStatus::Planned);
    }
    Ok(())
}

/// After every step of the deliveries: on hand went down only by what was
/// handed over, and every reservation is held by an open delivery where its
/// goods are now.
fn check_after_step(
    stock: &Stock,
    open: &[OnItsWay],
    on_hand_at_start: u64,
    handed_over: u64,
) -> Result<(), TestCaseError> {
    prop_assert_eq!(on_hand_in_total(stock), on_hand_at_start - handed_over);
    let mut held: BTreeMap<(NodeId, ItemId), u64> = BTreeMap::new();
    for way in open {
        *held.entry((way.at().clone(), way.delivery.item_id.clone())).or_default() += u64::from(way.delivery.quantity);
    }
    let reserved: BTreeMap<(NodeId, ItemId), u64> = stock
        .iter()
        .filter(|(_, balance)| balance.reserved > 0)
        .map(|(key, balance)| (key.clone(), balance.reserved))
        .collect();
    prop_assert_eq!(held, reserved);
    Ok(())
}

/// Moves one delivery one leg on: issues a transfer leg, or hands the goods
/// over at the end. Returns the quantity handed over, if it was the last leg.
fn advance(stock: &mut Stock, way: &mut OnItsWay) -> Result<Option<u64>, TestCaseError> {
    let leg = way.delivery.legs[way.done].clone();
    let (item, quantity) = (way.delivery.item_id.clone(), way.delivery.quantity);
    let refused = |err: NegativeStock| TestCaseError::fail(format!("{}: {err}", leg.leg_id));
    match &leg.to {
        Destination::Node(next) => {
            prop_assert_eq!(way.delivery.status(), DeliveryStatus::Upcoming, "{}", leg.leg_id);
            apply_effects(stock, &item, &transfer(&leg.from, next, quantity)).map_err(refused)?;
            way.delivery.legs[way.done].status = LegStatus::Issued;
            way.done += 1;
            Ok(None)
        }
        Destination::Customer(_) => {
            prop_assert_eq!(way.delivery.status(), DeliveryStatus::Ready, "{}", leg.leg_id);
            prop_assert_eq!(way.delivery.delivering_node(), &leg.from);
            apply_effects(stock, &item, &hand_over(&leg.from, quantity)).map_err(refused)?;
            way.delivery.legs[way.done].status = LegStatus::Completed;
            way.delivery.state = DeliveryState::Delivered;
            Ok(Some(u64::from(quantity)))
        }
    }
}

proptest! {
    #[test]
    fn planning_takes_the_first_covering_node_never_oversells_and_backorders_only_what_no_node_covers(
        scenario in scenarios(),
    ) {
        let mut planner = Planner::new(&scenario);

        planner.run(&scenario.events)?;

        // A receipt still waiting could not be covered by any node of its cascade now.
        for order in &planner.backorders {
            let covering = nodes_that_cover(&scenario.network, order, &planner.stock);
            prop_assert!(covering.is_empty(), "{:?} waits although {:?} cover it", order, covering);
        }
    }

    #[test]
    fn delivering_every_planned_delivery_takes_exactly_its_quantity_off_the_network(
        scenario in scenarios(),
        picks in prop::collection::vec(any::<Index>(), 1..8),
    ) {
        let mut planner = Planner::new(&scenario);
        planner.run(&scenario.events)?;
        let mut stock = planner.stock.clone();
        let mut open = Vec::new();
        for planned in &planner.planned {
            let way = OnItsWay::new(&scenario.network, planned);
            check_route(&scenario.network, planned, &way.delivery)?;
            open.push(way);
        }
        let on_hand_at_start = on_hand_in_total(&stock);
        let to_deliver: u64 = open.iter().map(|way| u64::from(way.delivery.quantity)).sum();
        let mut handed_over = 0;

        // Deliveries move one leg at a time, interleaved in a random order.
        for pick in picks.iter().cycle() {
            if open.is_empty() {
                break;
            }
            let chosen = pick.index(open.len());
            if let Some(quantity) = advance(&mut stock, &mut open[chosen])? {
                handed_over += quantity;
                let delivered = open.remove(chosen);
                prop_assert_eq!(delivered.delivery.status(), DeliveryStatus::Delivered);
            }
            check_after_step(&stock, &open, on_hand_at_start, handed_over)?;
        }

        prop_assert_eq!(handed_over, to_deliver);
        prop_assert_eq!(on_hand_in_total(&stock), on_hand_at_start - to_deliver);
        prop_assert!(stock.values().all(|balance| balance.reserved == 0), "{:?}", stock);
    }
}

/// A receipt of customer `customer`, not planned yet.
fn unplanned_receipt(customer: &str) -> Receipt {
    crate::domain::fixtures::receipt(7, customer, "TC", 1, false)
}

#[test]
fn the_planning_network_takes_the_first_master_and_manufacturer_and_the_branch_expediters_in_order() {
    let kinds = [
        ("MF2", NodeKind::Manufacturer),
        ("MF1", NodeKind::Manufacturer),
        ("MW", NodeKind::MasterWarehouse),
        ("B1", NodeKind::BranchWarehouse),
    ];
    let nodes: Vec<Node> =
        kinds.iter().map(|(id, kind)| Node { id: node(id), kind: *kind, name: (*id).into() }).collect();
    let account = |name: &str, membership: Membership| Account {
        username: username(name),
        password_hash: String::new(),
        membership,
    };
    let accounts = vec![
        account("exp-a", Membership::Expediter { node_id: node("B1") }),
        account("exp-b", Membership::Expediter { node_id: node("B2") }),
        account("exp-c", Membership::Expediter { node_id: node("B1") }),
        account("svc", Membership::Serviceman { node_id: node("S1") }),
    ];
    let network = PlanningNetwork::new(&nodes, vec![customer("C1")], accounts);

    let cascade = network.cascade(&unplanned_receipt("C1")).expect("a known customer");
    assert_eq!((cascade.master, cascade.manufacturer), (Some(node("MW")), Some(node("MF2"))), "the first of each kind");
    assert_eq!(
        network.expediters_of(Some(&node("B1"))),
        vec![(username("exp-a"), node("B1")), (username("exp-c"), node("B1"))],
        "the branch's expediters only, in account order"
    );
    assert_eq!(network.expediters_of(None), Vec::new(), "no delivering branch: the seller carries");
    let unknown = network.cascade(&unplanned_receipt("C9"));
    assert_eq!(unknown, Err(Inconsistent("receipt R-000007 names unknown customer C9".into())));
}
