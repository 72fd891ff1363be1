//! The operator API answers only a caller holding the token the node wrote into its directory.

use cluster::Cluster;
use node::api::{ApiRequest, call};
use protocol::NodeId;

#[test]
fn a_wrong_token_is_refused_and_the_right_one_answers() {
    let root = tempfile::tempdir().unwrap();
    let national = NodeId::NATIONAL;
    let mut cluster = Cluster::create(
        &credit_e2e::binary(),
        root.path(),
        &[("000000", "全国中小企业融资综合信用服务平台", None)],
    )
    .unwrap();
    cluster.start(national).unwrap();
    let dir = cluster.member(national).dir.clone();
    let status = call(&dir, &ApiRequest::Status).unwrap();
    assert_eq!(status["node"], "000000");

    // A copy of the API file with another token, as a process without the real file would try.
    let fake = root.path().join("fake");
    std::fs::create_dir(&fake).unwrap();
    let text = std::fs::read_to_string(dir.join("api.toml")).unwrap();
    let token_line = text
        .lines()
        .find(|l| l.starts_with("token"))
        .unwrap()
        .to_owned();
    let forged = text.replace(&token_line, &format!("token = \"{}\"", "0".repeat(64)));
    std::fs::write(fake.join("api.toml"), forged).unwrap();
    let error = call(&fake, &ApiRequest::Status).unwrap_err().to_string();
    assert!(error.contains("wrong API token"), "{error}");
    cluster.stop_all();
}
