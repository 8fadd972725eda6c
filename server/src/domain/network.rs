//! The network file: nodes, items, stock, customers and accounts. `validate`
//! checks a whole document against itself and against what the store already
//! holds, and lists every problem, so that a distributor fixes its file in one
//! round instead of one error at a time. A file with any problem is refused whole.

use std::collections::{HashMap, HashSet};

use handover_shared::{
    api::{ImportSummary, NetworkFile, Problem},
    CustomerId, ItemId, NodeId, NodeKind, Role, Username,
};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::{
    access::{Guarded, Principal},
    changes::{ChangeSet, StockBook},
    shipments::StockEffect,
    stock::Movement,
};

/// Limits that keep one document's values sane.
pub const MAX_NAME_LEN: usize = 200;
pub const MAX_PER_ORDER_LIMIT: i64 = 100_000;
pub const MAX_STOCK_QUANTITY: i64 = 1_000_000_000;
pub const MIN_PASSWORD_LEN: usize = 8;
pub const MAX_PASSWORD_LEN: usize = 1024;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    pub id: NodeId,
    pub kind: NodeKind,
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Item {
    pub id: ItemId,
    pub name: String,
    pub collectable: bool,
    pub max_per_order: u32,
    pub discontinued: bool,
}

/// A stock count: sets the on-hand quantity of an item at a node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StockCount {
    pub node_id: NodeId,
    pub item_id: ItemId,
    pub quantity: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Customer {
    pub id: CustomerId,
    pub name: String,
    pub branch_1: NodeId,
    pub branch_2: NodeId,
    pub seller_id: NodeId,
}

/// What an account belongs to, by role: the SPEC's "every account belongs to the
/// node or customer it acts for", made impossible to get wrong.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "role", rename_all = "snake_case")]
pub enum Membership {
    Admin,
    Dispatcher,
    Customer { customer_id: CustomerId },
    Seller { node_id: NodeId },
    Expediter { node_id: NodeId },
    Serviceman { node_id: NodeId },
}

impl Membership {
    pub fn role(&self) -> Role {
        match self {
            Membership::Admin => Role::Admin,
            Membership::Dispatcher => Role::Dispatcher,
            Membership::Customer { .. } => Role::Customer,
            Membership::Seller { .. } => Role::Seller,
            Membership::Expediter { .. } => Role::Expediter,
            Membership::Serviceman { .. } => Role::Serviceman,
        }
    }

    pub fn node_id(&self) -> Option<&NodeId> {
        match self {
            Membership::Seller { node_id } | Membership::Expediter { node_id } | Membership::Serviceman { node_id } => {
                Some(node_id)
            }
            _ => None,
        }
    }

    pub fn customer_id(&self) -> Option<&CustomerId> {
        match self {
            Membership::Customer { customer_id } => Some(customer_id),
            _ => None,
        }
    }
}

/// An account as the file describes it; the password is hashed before storage.
#[derive(Debug, Clone)]
pub struct AccountSpec {
    pub username: Username,
    pub password: SecretString,
    pub membership: Membership,
}

/// A stored account; the password only as its argon2id hash (PHC string).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Account {
    pub username: Username,
    pub password_hash: String,
    pub membership: Membership,
}

/// A validated network file whose passwords are already hashed.
#[derive(Debug, Clone, Default)]
pub struct ImportPlan {
    pub nodes: Vec<Node>,
    pub items: Vec<Item>,
    pub stock: Vec<StockCount>,
    pub customers: Vec<Customer>,
    pub accounts: Vec<Account>,
}

/// Applies a validated network file over what the store holds, as read under
/// the store's import lock: the file was validated against an earlier read, so
/// the node rules are checked again against `stored` (another import may have
/// landed since). A stock count sets the on-hand figure, recorded in the
/// ledger as the difference; it may not drop below what is reserved. `stock`
/// holds the balance of every counted (node, item). Everything, or nothing
/// with every problem.
pub fn import(
    plan: ImportPlan,
    stored: &KnownNetwork,
    mut stock: StockBook,
    now: OffsetDateTime,
) -> Result<(ImportSummary, ChangeSet), Vec<Problem>> {
    let mut problems = Problems::default();
    for (i, node) in plan.nodes.iter().enumerate() {
        check_node(i, node, stored, &plan.nodes[..i], &mut problems);
    }
    for (i, count) in plan.stock.iter().enumerate() {
        let balance = match stock.balance(&count.node_id, &count.item_id) {
            Ok(balance) => balance,
            Err(err) => {
                problems.add(format!("stock[{i}]"), err.to_string());
                continue;
            }
        };
        let target = i64::try_from(count.quantity).unwrap_or(i64::MAX);
        let delta = target - i64::try_from(balance.on_hand).unwrap_or(i64::MAX);
        if delta == 0 {
            continue;
        }
        let effect = StockEffect { node: &count.node_id, on_hand_delta: delta, reserved_delta: 0 };
        if stock.apply(&count.item_id, &effect, Movement::StockCount, now).is_err() {
            problems.add(
                format!("stock[{i}].quantity"),
                format!(
                    "{} of {} at {} are reserved for planned deliveries; on hand cannot drop to {}",
                    balance.reserved, count.item_id, count.node_id, count.quantity
                ),
            );
        }
    }
    if !problems.0.is_empty() {
        return Err(problems.0);
    }
    let summary = ImportSummary {
        nodes: plan.nodes.len() as u64,
        items: plan.items.len() as u64,
        stock: plan.stock.len() as u64,
        customers: plan.customers.len() as u64,
        accounts: plan.accounts.len() as u64,
    };
    let mut changes = ChangeSet {
        nodes: plan.nodes,
        items: plan.items,
        customers: plan.customers,
        accounts: plan.accounts,
        ..ChangeSet::default()
    };
    changes.take_stock(stock);
    Ok((summary, changes))
}

/// The rules a node must keep against the stored network and the nodes before
/// it in the same file: its kind never changes, and the cascade knows one
/// master warehouse and one manufacturer. `false` when it broke one.
fn check_node(index: usize, node: &Node, known: &KnownNetwork, earlier: &[Node], problems: &mut Problems) -> bool {
    let (id, kind) = (&node.id, node.kind);
    let at = format!("nodes[{index}].kind");
    if let Some(&stored) = known.nodes.get(id) {
        if stored != kind {
            problems.add(at, format!("node {id} is already a {stored}; a node's kind cannot change"));
            return false;
        }
    }
    if matches!(kind, NodeKind::MasterWarehouse | NodeKind::Manufacturer) {
        let other = known
            .nodes
            .iter()
            .map(|(other, other_kind)| (other, *other_kind))
            .chain(earlier.iter().map(|node| (&node.id, node.kind)))
            .find(|(other, other_kind)| *other_kind == kind && *other != id);
        if let Some((other, _)) = other {
            problems.add(at, format!("the network already has a {kind} ({other}); it may have only one"));
            return false;
        }
    }
    true
}

/// A network file that passed every check.
#[derive(Debug, Clone, Default)]
pub struct ValidNetwork {
    pub nodes: Vec<Node>,
    pub items: Vec<Item>,
    pub stock: Vec<StockCount>,
    pub customers: Vec<Customer>,
    pub accounts: Vec<AccountSpec>,
}

/// What the store already holds, for references a file may make to records it
/// does not name itself ("importing again updates what it names").
#[derive(Debug, Clone, Default)]
pub struct KnownNetwork {
    pub nodes: HashMap<NodeId, NodeKind>,
    pub items: HashSet<ItemId>,
    pub customers: HashSet<CustomerId>,
}

/// Collects problems with their location in the document.
#[derive(Debug, Default)]
struct Problems(Vec<Problem>);

impl Problems {
    fn add(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(Problem::new(path, message));
    }

    /// Parses an id, recording why it is bad.
    fn id<T: TryFrom<String, Error = handover_shared::IdError>>(&mut self, path: String, raw: &str) -> Option<T> {
        match T::try_from(raw.to_owned()) {
            Ok(id) => Some(id),
            Err(err) => {
                self.add(path, format!("invalid id {raw:?}: {err}"));
                None
            }
        }
    }

    fn name(&mut self, path: String, raw: &str) -> Option<String> {
        let trimmed = raw.trim();
        if trimmed.is_empty() {
            self.add(path, "must not be empty");
            None
        } else if trimmed.chars().count() > MAX_NAME_LEN {
            self.add(path, format!("must be at most {MAX_NAME_LEN} characters"));
            None
        } else if trimmed.chars().any(char::is_control) {
            self.add(path, "must not contain control characters");
            None
        } else {
            Some(trimmed.to_owned())
        }
    }
}

/// Checks a whole network file. Returns the validated network, or every problem.
pub fn validate(file: &NetworkFile, known: &KnownNetwork) -> Result<ValidNetwork, Vec<Problem>> {
    let mut problems = Problems::default();
    if file.nodes.is_empty()
        && file.items.is_empty()
        && file.stock.is_empty()
        && file.customers.is_empty()
        && file.accounts.is_empty()
    {
        problems.add("", "the document names nothing to import");
        return Err(problems.0);
    }

    // References resolve against everything the file declares, even records that
    // have problems of their own: one bad field is reported once, not again at
    // every reference to its record. A node whose kind is unreadable matches any
    // kind, for the same reason.
    let mut node_kinds: HashMap<NodeId, Option<NodeKind>> =
        known.nodes.iter().map(|(id, kind)| (id.clone(), Some(*kind))).collect();
    for raw in &file.nodes {
        if let Ok(id) = NodeId::parse(raw.id.as_str()) {
            node_kinds.insert(id, raw.kind.parse().ok());
        }
    }
    let mut item_ids = known.items.clone();
    item_ids.extend(file.items.iter().filter_map(|raw| ItemId::parse(raw.id.as_str()).ok()));
    let mut customer_ids = known.customers.clone();
    customer_ids.extend(file.customers.iter().filter_map(|raw| CustomerId::parse(raw.id.as_str()).ok()));

    let nodes = validate_nodes(file, known, &mut problems);
    let items = validate_items(file, &mut problems);
    let stock = validate_stock(file, &node_kinds, &item_ids, &mut problems);
    let customers = validate_customers(file, &node_kinds, &mut problems);
    let accounts = validate_accounts(file, &node_kinds, &customer_ids, &mut problems);

    if problems.0.is_empty() {
        Ok(ValidNetwork { nodes, items, stock, customers, accounts })
    } else {
        Err(problems.0)
    }
}

/// Records a duplicate when `key` was seen before in this section.
fn first_time<K: Eq + std::hash::Hash>(seen: &mut HashMap<K, usize>, key: K, index: usize) -> Result<(), usize> {
    match seen.get(&key) {
        Some(&first) => Err(first),
        None => {
            seen.insert(key, index);
            Ok(())
        }
    }
}

fn validate_nodes(file: &NetworkFile, known: &KnownNetwork, problems: &mut Problems) -> Vec<Node> {
    let mut seen = HashMap::new();
    let mut nodes = Vec::new();
    for (i, raw) in file.nodes.iter().enumerate() {
        let at = |field: &str| format!("nodes[{i}].{field}");
        let id = problems.id::<NodeId>(at("id"), &raw.id);
        let kind = match raw.kind.parse::<NodeKind>() {
            Ok(kind) => Some(kind),
            Err(err) => {
                problems.add(at("kind"), err.to_string());
                None
            }
        };
        let name = problems.name(at("name"), &raw.name);
        let (Some(id), Some(kind), Some(name)) = (id, kind, name) else {
            continue;
        };
        if let Err(first) = first_time(&mut seen, id.clone(), i) {
            problems.add(at("id"), format!("duplicate node id {id} (first at nodes[{first}])"));
            continue;
        }
        let node = Node { id, kind, name };
        if check_node(i, &node, known, &nodes, problems) {
            nodes.push(node);
        }
    }
    nodes
}

fn validate_items(file: &NetworkFile, problems: &mut Problems) -> Vec<Item> {
    let mut seen = HashMap::new();
    let mut items = Vec::new();
    for (i, raw) in file.items.iter().enumerate() {
        let at = |field: &str| format!("items[{i}].{field}");
        let id = problems.id::<ItemId>(at("id"), &raw.id);
        let name = problems.name(at("name"), &raw.name);
        let max_per_order = if (1..=MAX_PER_ORDER_LIMIT).contains(&raw.max_per_order) {
            u32::try_from(raw.max_per_order).ok()
        } else {
            problems.add(
                at("max_per_order"),
                format!("must be a whole number from 1 to {MAX_PER_ORDER_LIMIT}, got {}", raw.max_per_order),
            );
            None
        };
        let (Some(id), Some(name), Some(max_per_order)) = (id, name, max_per_order) else {
            continue;
        };
        if let Err(first) = first_time(&mut seen, id.clone(), i) {
            problems.add(at("id"), format!("duplicate item id {id} (first at items[{first}])"));
            continue;
        }
        items.push(Item { id, name, collectable: raw.collectable, max_per_order, discontinued: raw.discontinued });
    }
    items
}

fn validate_stock(
    file: &NetworkFile,
    node_kinds: &NodeKinds,
    item_ids: &HashSet<ItemId>,
    problems: &mut Problems,
) -> Vec<StockCount> {
    let mut seen = HashMap::new();
    let mut counts = Vec::new();
    for (i, raw) in file.stock.iter().enumerate() {
        let at = |field: &str| format!("stock[{i}].{field}");
        let node_id = problems.id::<NodeId>(at("node_id"), &raw.node_id).filter(|id| {
            let known = node_kinds.contains_key(id);
            if !known {
                problems.add(at("node_id"), format!("unknown node {id}"));
            }
            known
        });
        let item_id = problems.id::<ItemId>(at("item_id"), &raw.item_id).filter(|id| {
            let known = item_ids.contains(id);
            if !known {
                problems.add(at("item_id"), format!("unknown item {id}"));
            }
            known
        });
        let quantity = if (0..=MAX_STOCK_QUANTITY).contains(&raw.quantity) {
            u64::try_from(raw.quantity).ok()
        } else {
            problems.add(
                at("quantity"),
                format!("must be a whole number from 0 to {MAX_STOCK_QUANTITY}, got {}", raw.quantity),
            );
            None
        };
        let (Some(node_id), Some(item_id), Some(quantity)) = (node_id, item_id, quantity) else {
            continue;
        };
        if let Err(first) = first_time(&mut seen, (node_id.clone(), item_id.clone()), i) {
            problems.add(
                at("item_id"),
                format!("stock of {item_id} at {node_id} is given twice (first at stock[{first}])"),
            );
            continue;
        }
        counts.push(StockCount { node_id, item_id, quantity });
    }
    counts
}

/// Every node id visible to a file, with its kind when readable.
type NodeKinds = HashMap<NodeId, Option<NodeKind>>;

/// Parses a node reference that must name a node of `kind`.
fn node_of_kind(
    problems: &mut Problems,
    path: String,
    raw: &str,
    kind: NodeKind,
    node_kinds: &NodeKinds,
) -> Option<NodeId> {
    let id = problems.id::<NodeId>(path.clone(), raw)?;
    match node_kinds.get(&id) {
        None => {
            problems.add(path, format!("unknown node {id}"));
            None
        }
        Some(&Some(actual)) if actual != kind => {
            problems.add(path, format!("node {id} is a {actual}, not a {kind}"));
            None
        }
        Some(_) => Some(id),
    }
}

fn validate_customers(file: &NetworkFile, node_kinds: &NodeKinds, problems: &mut Problems) -> Vec<Customer> {
    let mut seen = HashMap::new();
    let mut customers = Vec::new();
    for (i, raw) in file.customers.iter().enumerate() {
        let at = |field: &str| format!("customers[{i}].{field}");
        let id = problems.id::<CustomerId>(at("id"), &raw.id);
        let name = problems.name(at("name"), &raw.name);
        let branch = NodeKind::BranchWarehouse;
        let branch_1 = node_of_kind(problems, at("branch_1"), &raw.branch_1, branch, node_kinds);
        let branch_2 = node_of_kind(problems, at("branch_2"), &raw.branch_2, branch, node_kinds);
        let seller_id = node_of_kind(problems, at("seller_id"), &raw.seller_id, NodeKind::Seller, node_kinds);
        let (Some(id), Some(name), Some(branch_1), Some(branch_2), Some(seller_id)) =
            (id, name, branch_1, branch_2, seller_id)
        else {
            continue;
        };
        if branch_1 == branch_2 {
            problems.add(at("branch_2"), "branch #2 must differ from branch #1");
            continue;
        }
        if let Err(first) = first_time(&mut seen, id.clone(), i) {
            problems.add(at("id"), format!("duplicate customer id {id} (first at customers[{first}])"));
            continue;
        }
        customers.push(Customer { id, name, branch_1, branch_2, seller_id });
    }
    customers
}

fn validate_accounts(
    file: &NetworkFile,
    node_kinds: &NodeKinds,
    customer_ids: &HashSet<CustomerId>,
    problems: &mut Problems,
) -> Vec<AccountSpec> {
    let mut seen = HashMap::new();
    let mut accounts = Vec::new();
    for (i, raw) in file.accounts.iter().enumerate() {
        let at = |field: &str| format!("accounts[{i}].{field}");
        let username = problems.id::<Username>(at("username"), &raw.username);
        let password_len = raw.password.chars().count();
        let password_ok = if password_len < MIN_PASSWORD_LEN {
            problems.add(at("password"), format!("must be at least {MIN_PASSWORD_LEN} characters"));
            false
        } else if raw.password.len() > MAX_PASSWORD_LEN {
            problems.add(at("password"), format!("must be at most {MAX_PASSWORD_LEN} bytes"));
            false
        } else {
            true
        };
        let membership = match raw.role.parse::<Role>() {
            Err(err) => {
                problems.add(at("role"), err.to_string());
                None
            }
            Ok(role) => membership(
                role,
                raw.node_id.as_deref(),
                raw.customer_id.as_deref(),
                &at,
                node_kinds,
                customer_ids,
                problems,
            ),
        };
        let (Some(username), true, Some(membership)) = (username, password_ok, membership) else {
            continue;
        };
        if let Err(first) = first_time(&mut seen, username.clone(), i) {
            problems.add(at("username"), format!("duplicate username {username} (first at accounts[{first}])"));
            continue;
        }
        accounts.push(AccountSpec { username, password: SecretString::from(raw.password.clone()), membership });
    }
    accounts
}

/// Checks that an account names exactly what its role belongs to.
fn membership(
    role: Role,
    node_id: Option<&str>,
    customer_id: Option<&str>,
    at: &dyn Fn(&str) -> String,
    node_kinds: &NodeKinds,
    customer_ids: &HashSet<CustomerId>,
    problems: &mut Problems,
) -> Option<Membership> {
    let needs_node = match role {
        Role::Expediter => Some(NodeKind::BranchWarehouse),
        Role::Seller | Role::Serviceman => Some(NodeKind::Seller),
        Role::Admin | Role::Dispatcher | Role::Customer => None,
    };
    let mut ok = true;
    if needs_node.is_none() && node_id.is_some() {
        problems.add(at("node_id"), format!("a {role} account belongs to no node"));
        ok = false;
    }
    if role != Role::Customer && customer_id.is_some() {
        problems.add(at("customer_id"), format!("only customer accounts name a customer, not a {role}"));
        ok = false;
    }
    let node = match (needs_node, node_id) {
        (Some(kind), Some(raw)) => node_of_kind(problems, at("node_id"), raw, kind, node_kinds),
        (Some(kind), None) => {
            problems.add(at("node_id"), format!("a {role} account must name its {kind} node"));
            None
        }
        (None, _) => None,
    };
    let customer = match (role, customer_id) {
        (Role::Customer, Some(raw)) => problems.id::<CustomerId>(at("customer_id"), raw).filter(|id| {
            let known = customer_ids.contains(id);
            if !known {
                problems.add(at("customer_id"), format!("unknown customer {id}"));
            }
            known
        }),
        (Role::Customer, None) => {
            problems.add(at("customer_id"), "a customer account must name its customer");
            None
        }
        _ => None,
    };
    if !ok {
        return None;
    }
    match role {
        Role::Admin => Some(Membership::Admin),
        Role::Dispatcher => Some(Membership::Dispatcher),
        Role::Customer => customer.map(|customer_id| Membership::Customer { customer_id }),
        Role::Seller => node.map(|node_id| Membership::Seller { node_id }),
        Role::Expediter => node.map(|node_id| Membership::Expediter { node_id }),
        Role::Serviceman => node.map(|node_id| Membership::Serviceman { node_id }),
    }
}

impl AccountSpec {
    pub fn password(&self) -> &str {
        self.password.expose_secret()
    }
}

impl Guarded for Customer {
    fn describe(&self) -> String {
        format!("customer {}", self.id)
    }

    /// Dispatchers see every customer; a customer account sees its own.
    fn visible_to(&self, principal: &Principal) -> bool {
        principal.acts_for_customer(&self.id)
    }
}

impl Guarded for Node {
    fn describe(&self) -> String {
        format!("node {}", self.id)
    }

    /// Dispatchers see every node's stock.
    fn visible_to(&self, principal: &Principal) -> bool {
        principal.is_dispatcher()
    }
}

#[cfg(test)]
mod tests {
    use handover_shared::api::{NetworkAccount, NetworkCustomer, NetworkItem, NetworkNode, NetworkStock};
    use rstest::rstest;

    use super::*;

    fn node(id: &str, kind: &str) -> NetworkNode {
        NetworkNode { id: id.into(), kind: kind.into(), name: format!("Node {id}") }
    }

    fn account(username: &str, role: &str, node_id: Option<&str>, customer_id: Option<&str>) -> NetworkAccount {
        NetworkAccount {
            username: username.into(),
            password: "long-enough-password".into(),
            role: role.into(),
            node_id: node_id.map(Into::into),
            customer_id: customer_id.map(Into::into),
        }
    }

    /// The SPEC's example network.
    fn example() -> NetworkFile {
        NetworkFile {
            nodes: vec![
                node("MFR", "manufacturer"),
                node("MW", "master_warehouse"),
                node("B1", "branch_warehouse"),
                node("B2", "branch_warehouse"),
                node("S1", "seller"),
            ],
            items: vec![NetworkItem {
                id: "TC-100".into(),
                name: "Toner 100".into(),
                collectable: true,
                max_per_order: 20,
                discontinued: false,
            }],
            stock: vec![NetworkStock { node_id: "B1".into(), item_id: "TC-100".into(), quantity: 5 }],
            customers: vec![NetworkCustomer {
                id: "C1".into(),
                name: "Office A".into(),
                branch_1: "B1".into(),
                branch_2: "B2".into(),
                seller_id: "S1".into(),
            }],
            accounts: vec![
                account("disp", "dispatcher", None, None),
                account("exp1", "expediter", Some("B1"), None),
                account("svc1", "serviceman", Some("S1"), None),
                account("rep1", "seller", Some("S1"), None),
                account("cust1", "customer", None, Some("C1")),
            ],
        }
    }

    fn paths(problems: &[Problem]) -> Vec<&str> {
        problems.iter().map(|p| p.path.as_str()).collect()
    }

    #[test]
    fn the_spec_example_is_valid() {
        let network = validate(&example(), &KnownNetwork::default()).expect("valid");
        assert_eq!(network.nodes.len(), 5);
        assert_eq!(network.stock[0].quantity, 5);
        assert_eq!(network.accounts[1].membership, Membership::Expediter { node_id: NodeId::parse("B1").expect("id") });
    }

    #[test]
    fn an_empty_document_is_refused() {
        let problems = validate(&NetworkFile::default(), &KnownNetwork::default()).expect_err("refused");
        assert_eq!(problems[0].message, "the document names nothing to import");
    }

    #[test]
    fn every_problem_is_listed_not_only_the_first() {
        let mut file = example();
        file.nodes.push(node("B1", "branch_warehouse"));
        file.items[0].max_per_order = 0;
        file.stock[0].quantity = -3;
        file.customers[0].seller_id = "B2".into();
        file.accounts[0].password = "short".into();
        let problems = validate(&file, &KnownNetwork::default()).expect_err("refused");
        assert_eq!(
            paths(&problems),
            vec![
                "nodes[5].id",
                "items[0].max_per_order",
                "stock[0].quantity",
                "customers[0].seller_id",
                "accounts[0].password",
            ]
        );
        assert_eq!(problems[0].message, "duplicate node id B1 (first at nodes[2])");
        assert_eq!(problems[3].message, "node B2 is a branch_warehouse, not a seller");
    }

    #[rstest]
    #[case::unknown_kind(|f: &mut NetworkFile| f.nodes[0].kind = "factory".into(), "nodes[0].kind")]
    #[case::bad_node_id(|f: &mut NetworkFile| f.nodes[0].id = "M F R".into(), "nodes[0].id")]
    #[case::blank_name(|f: &mut NetworkFile| f.nodes[1].name = "  ".into(), "nodes[1].name")]
    #[case::unknown_stock_node(|f: &mut NetworkFile| f.stock[0].node_id = "B9".into(), "stock[0].node_id")]
    #[case::unknown_stock_item(|f: &mut NetworkFile| f.stock[0].item_id = "XX".into(), "stock[0].item_id")]
    #[case::same_branches(|f: &mut NetworkFile| f.customers[0].branch_2 = "B1".into(), "customers[0].branch_2")]
    #[case::branch_not_a_branch(|f: &mut NetworkFile| f.customers[0].branch_1 = "MW".into(), "customers[0].branch_1")]
    #[case::unknown_role(|f: &mut NetworkFile| f.accounts[0].role = "boss".into(), "accounts[0].role")]
    #[case::expediter_at_a_seller(|f: &mut NetworkFile| f.accounts[1].node_id = Some("S1".into()), "accounts[1].node_id")]
    #[case::serviceman_without_node(|f: &mut NetworkFile| f.accounts[2].node_id = None, "accounts[2].node_id")]
    #[case::dispatcher_with_node(|f: &mut NetworkFile| f.accounts[0].node_id = Some("B1".into()), "accounts[0].node_id")]
    #[case::customer_unknown(|f: &mut NetworkFile| f.accounts[4].customer_id = Some("C9".into()), "accounts[4].customer_id")]
    #[case::customer_missing(|f: &mut NetworkFile| f.accounts[4].customer_id = None, "accounts[4].customer_id")]
    #[case::courier_naming_customer(|f: &mut NetworkFile| f.accounts[1].customer_id = Some("C1".into()), "accounts[1].customer_id")]
    #[case::duplicate_username(|f: &mut NetworkFile| f.accounts[1].username = "disp".into(), "accounts[1].username")]
    #[case::huge_max_per_order(|f: &mut NetworkFile| f.items[0].max_per_order = i64::MAX, "items[0].max_per_order")]
    #[case::second_master(|f: &mut NetworkFile| f.nodes.push(node("MW2", "master_warehouse")), "nodes[5].kind")]
    #[case::second_manufacturer(|f: &mut NetworkFile| f.nodes.push(node("MFR2", "manufacturer")), "nodes[5].kind")]
    #[case::duplicate_stock_line(|f: &mut NetworkFile| { let again = f.stock[0].clone(); f.stock.push(again); }, "stock[1].item_id")]
    fn each_bad_value_is_named(#[case] spoil: fn(&mut NetworkFile), #[case] path: &str) {
        let mut file = example();
        spoil(&mut file);
        let problems = validate(&file, &KnownNetwork::default()).expect_err("refused");
        assert_eq!(paths(&problems), vec![path], "{problems:?}");
    }

    #[test]
    fn a_later_file_may_refer_to_what_the_store_holds() {
        let first = validate(&example(), &KnownNetwork::default()).expect("valid");
        let known = KnownNetwork {
            nodes: first.nodes.iter().map(|n| (n.id.clone(), n.kind)).collect(),
            items: first.items.iter().map(|i| i.id.clone()).collect(),
            customers: first.customers.iter().map(|c| c.id.clone()).collect(),
        };
        let update = NetworkFile {
            accounts: vec![account("exp2", "expediter", Some("B2"), None)],
            stock: vec![NetworkStock { node_id: "MW".into(), item_id: "TC-100".into(), quantity: 40 }],
            ..NetworkFile::default()
        };
        let network = validate(&update, &known).expect("refers to stored nodes and items");
        assert_eq!(network.accounts.len(), 1);

        let mut rekind = NetworkFile::default();
        rekind.nodes.push(node("B1", "seller"));
        let problems = validate(&rekind, &known).expect_err("kind change refused");
        assert_eq!(problems[0].message, "node B1 is already a branch_warehouse; a node's kind cannot change");
    }
}

#[cfg(test)]
mod import_tests {
    use super::*;
    use crate::domain::stock::Balance;

    fn node(id: &str, kind: NodeKind) -> Node {
        Node { id: NodeId::parse(id).expect("id"), kind, name: id.into() }
    }

    fn stored(nodes: &[(&str, NodeKind)]) -> KnownNetwork {
        KnownNetwork {
            nodes: nodes.iter().map(|(id, kind)| (NodeId::parse(*id).expect("id"), *kind)).collect(),
            ..KnownNetwork::default()
        }
    }

    fn count(node: &str, quantity: u64) -> StockCount {
        StockCount { node_id: NodeId::parse(node).expect("id"), item_id: ItemId::parse("TC").expect("id"), quantity }
    }

    fn book(node: &str, on_hand: u64, reserved: u64) -> StockBook {
        StockBook::new([(
            NodeId::parse(node).expect("id"),
            ItemId::parse("TC").expect("id"),
            Balance { on_hand, reserved },
        )])
    }

    fn paths(problems: Vec<Problem>) -> Vec<String> {
        problems.into_iter().map(|problem| problem.path).collect()
    }

    #[test]
    fn a_stock_count_is_recorded_as_the_difference_with_what_is_on_hand() {
        let plan = ImportPlan { stock: vec![count("B1", 7)], ..ImportPlan::default() };
        let (summary, changes) =
            import(plan, &stored(&[]), book("B1", 10, 2), OffsetDateTime::UNIX_EPOCH).expect("applies");
        assert_eq!(summary.stock, 1);
        assert_eq!(changes.ledger.iter().map(|line| line.on_hand_delta).collect::<Vec<_>>(), vec![-3]);
        assert_eq!(changes.balances[0].2, Balance { on_hand: 7, reserved: 2 });
        let unchanged = ImportPlan { stock: vec![count("B1", 10)], ..ImportPlan::default() };
        let (_, changes) =
            import(unchanged, &stored(&[]), book("B1", 10, 2), OffsetDateTime::UNIX_EPOCH).expect("applies");
        assert!(changes.ledger.is_empty() && changes.balances.is_empty(), "the same count moves nothing");
    }

    #[test]
    fn what_the_store_holds_now_refuses_the_whole_plan_with_every_problem() {
        // Validated against an older read: meanwhile MW-A became the master
        // warehouse and B1 a branch, and planning reserved 4 at B1.
        let now = stored(&[("MW-A", NodeKind::MasterWarehouse), ("B1", NodeKind::BranchWarehouse)]);
        let plan = ImportPlan {
            nodes: vec![node("MW-B", NodeKind::MasterWarehouse), node("B1", NodeKind::Seller)],
            stock: vec![count("B1", 3)],
            ..ImportPlan::default()
        };
        let problems = import(plan, &now, book("B1", 10, 4), OffsetDateTime::UNIX_EPOCH).expect_err("refused");
        assert_eq!(paths(problems), vec!["nodes[0].kind", "nodes[1].kind", "stock[0].quantity"]);
    }

    #[test]
    fn a_counted_balance_that_was_not_read_is_a_problem_not_a_zero() {
        let plan = ImportPlan { stock: vec![count("B2", 3)], ..ImportPlan::default() };
        let problems = import(plan, &stored(&[]), book("B1", 10, 0), OffsetDateTime::UNIX_EPOCH).expect_err("refused");
        assert_eq!(paths(problems), vec!["stock[0]"]);
    }
}
