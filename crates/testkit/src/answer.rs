//! Reading a `CheckResponse`, and asserting what it decided.

use tollgate::api::pb;

/// The decision of a response.
pub fn decision(response: &pb::CheckResponse) -> pb::Decision {
    pb::Decision::try_from(response.decision).unwrap_or(pb::Decision::Unspecified)
}

/// The reason codes of a response, in order.
pub fn codes(response: &pb::CheckResponse) -> Vec<String> {
    response.reasons.iter().map(|r| r.code.clone()).collect()
}

/// The reasons' policy ids, in order.
pub fn policy_ids(response: &pb::CheckResponse) -> Vec<String> {
    response
        .reasons
        .iter()
        .map(|r| r.policy_id.clone())
        .collect()
}

/// The serving policy version a response reports.
pub fn policy_version(response: &pb::CheckResponse) -> String {
    response
        .freshness
        .as_ref()
        .map(|f| f.policy_version.clone())
        .unwrap_or_default()
}

/// The tenant snapshot version a response reports.
pub fn snapshot_version(response: &pb::CheckResponse) -> u64 {
    response
        .freshness
        .as_ref()
        .map(|f| f.snapshot_version)
        .unwrap_or_default()
}

/// `DECISION_ALLOW ["member_role"] policies [...] ...`, for assertion messages.
pub fn summary(response: &pb::CheckResponse) -> String {
    format!(
        "{} {:?} policies {:?} errors {:?} policy_version {} snapshot_version {}",
        decision(response).as_str_name(),
        codes(response),
        policy_ids(response),
        response.errors,
        policy_version(response),
        snapshot_version(response)
    )
}

/// Asserts the decision, with the response summary in the failure message.
#[track_caller]
pub fn assert_decision(response: &pb::CheckResponse, want: pb::Decision) {
    assert_eq!(decision(response), want, "{}", summary(response));
}

/// Asserts the decision and the reason codes, in order.
#[track_caller]
pub fn expect_decision(response: &pb::CheckResponse, want: pb::Decision, want_codes: &[&str]) {
    assert_decision(response, want);
    assert_eq!(codes(response), want_codes, "{}", summary(response));
}

/// Asserts the decision, the reason codes and the reasons' policy ids, in order.
#[track_caller]
pub fn expect_reasons(
    response: &pb::CheckResponse,
    want: pb::Decision,
    want_codes: &[&str],
    want_policy_ids: &[&str],
) {
    expect_decision(response, want, want_codes);
    assert_eq!(
        policy_ids(response),
        want_policy_ids,
        "{}",
        summary(response)
    );
}

/// One row of a table of checks: the request as for
/// [`check_str`](crate::request::check_str), the expected decision, reason
/// codes and policy ids. An empty list is not checked. Sent by
/// [`expect_cases`](crate::client::expect_cases).
pub type Case<'a> = (&'a str, pb::Decision, &'a [&'a str], &'a [&'a str]);
