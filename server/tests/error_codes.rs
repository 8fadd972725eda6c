//! `docs/error-codes.md` is the published list of codes; `ErrorCode` (in
//! `shared`) and `RejectCode` (in the server's domain) are what the code sends.
//! These tests keep the two in step, naming every code that is on one side only.

use std::collections::BTreeMap;

use handover_server::domain::confirmations::RejectCode;
use handover_shared::ErrorCode;

fn page() -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/error-codes.md");
    std::fs::read_to_string(path).unwrap_or_else(|err| panic!("reading {path}: {err}"))
}

/// The cells of every row of the one table under `## {heading}`, the header
/// checked and the separator row left out.
fn table(page: &str, heading: &str, header: &str) -> Vec<Vec<String>> {
    let section = page
        .split("\n## ")
        .find(|section| section.lines().next().map(str::trim) == Some(heading))
        .unwrap_or_else(|| panic!("docs/error-codes.md has no section `## {heading}`"));
    let rows: Vec<&str> = section
        .lines()
        .skip_while(|line| !line.trim_start().starts_with('|'))
        .take_while(|line| line.trim_start().starts_with('|'))
        .map(str::trim)
        .collect();
    assert_eq!(rows.first().copied(), Some(header), "the table under `## {heading}` starts with its header");
    let cells = |row: &str| -> Vec<String> {
        row.trim_matches('|').split('|').map(|cell| cell.trim().trim_matches('`').to_owned()).collect()
    };
    assert!(
        rows.get(1).is_some_and(|row| cells(row).iter().all(|cell| !cell.is_empty() && cell.chars().all(|c| c == '-'))),
        "the header under `## {heading}` is followed by a separator row"
    );
    rows.iter().skip(2).map(|row| cells(row)).collect()
}

/// Codes listed on the page and codes declared in the source, compared by name;
/// a code listed twice on the page counts as an extra.
fn compare<V: PartialEq + std::fmt::Debug>(what: &str, listed: Vec<(String, V)>, declared: Vec<(&str, V)>) {
    let mut problems = Vec::new();
    let mut on_page = BTreeMap::new();
    for (code, value) in listed {
        if on_page.insert(code.clone(), value).is_some() {
            problems.push(format!("`{code}` is listed twice"));
        }
    }
    for (code, value) in &declared {
        match on_page.remove(*code) {
            None => problems.push(format!("`{code}` is missing from the page")),
            Some(listed) if listed != *value => {
                problems.push(format!("`{code}` is listed with {listed:?}, declared with {value:?}"))
            }
            Some(_) => {}
        }
    }
    problems.extend(on_page.keys().map(|code| format!("`{code}` is on the page but not declared")));
    assert!(problems.is_empty(), "docs/error-codes.md, {what}:\n  {}", problems.join("\n  "));
}

#[test]
fn the_error_codes_table_lists_exactly_the_error_code_enum_with_its_statuses() {
    let rows = table(&page(), "Error codes", "| code | status | where |");

    let listed = rows
        .into_iter()
        .map(|row| {
            assert_eq!(row.len(), 3, "a row of `## Error codes` has three cells: {row:?}");
            let status =
                row[1].parse::<u16>().unwrap_or_else(|_| panic!("`{}`: status {:?} is no number", row[0], row[1]));
            (row[0].clone(), status)
        })
        .collect();
    let declared = ErrorCode::ALL.iter().map(|code| (code.as_str(), code.status())).collect();

    compare("`## Error codes` against ErrorCode", listed, declared);
}

/// Every `RejectCode`, in the order of the page. The `match` is exhaustive, so a
/// new variant does not compile until it is put in this chain (and the test
/// below then wants it on the page).
fn every_reject_code() -> Vec<RejectCode> {
    let mut all = Vec::new();
    let mut next = Some(RejectCode::NotAssignee);
    while let Some(code) = next {
        all.push(code);
        next = match code {
            RejectCode::NotAssignee => Some(RejectCode::NotReady),
            RejectCode::NotReady => Some(RejectCode::DeliveryCancelled),
            RejectCode::DeliveryCancelled => Some(RejectCode::AlreadyDelivered),
            RejectCode::AlreadyDelivered => Some(RejectCode::ConflictingDuplicate),
            RejectCode::ConflictingDuplicate => Some(RejectCode::Superseded),
            RejectCode::Superseded => Some(RejectCode::Invalid),
            RejectCode::Invalid => Some(RejectCode::BadSignature),
            RejectCode::BadSignature => Some(RejectCode::SequenceReused),
            RejectCode::SequenceReused => Some(RejectCode::ChainBroken),
            RejectCode::ChainBroken => None,
        };
    }
    all
}

#[test]
fn the_confirmation_results_table_lists_exactly_the_reject_codes() {
    let rows = table(&page(), "Confirmation results", "| code | meaning |");

    let listed = rows
        .into_iter()
        .map(|row| {
            assert_eq!(row.len(), 2, "a row of `## Confirmation results` has two cells: {row:?}");
            assert!(!row[1].is_empty(), "`{}` says what it means", row[0]);
            (row[0].clone(), ())
        })
        .collect();
    let declared = every_reject_code().into_iter().map(|code| (code.as_str(), ())).collect();

    compare("`## Confirmation results` against RejectCode", listed, declared);
}

#[test]
fn no_reject_code_is_spelled_like_an_error_code() {
    // They travel in different places (a push result, an error body), but one
    // string meaning two things would confuse whoever reads the logs.
    for code in every_reject_code() {
        assert_eq!(ErrorCode::parse(code.as_str()), None, "`{}` is both", code.as_str());
    }
}
