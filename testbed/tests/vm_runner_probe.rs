//! Runs through the cargo runner: proves VM test binaries land on a KVM that runs Linux guests.
#[test]
fn runs_where_kvm_is_real() {
    assert!(
        vpod_testbed::probe::probe().is_direct(),
        "{}",
        vpod_testbed::probe::probe()
    );
    let cwd = std::env::current_dir().unwrap();
    assert!(cwd.ends_with("testbed"), "cwd is {}", cwd.display());
}
