//! The macros: what compiles (and runs), and the errors a misuse gets.

#[test]
fn macro_usage_compiles_and_misuse_is_explained() {
    let t = trybuild::TestCases::new();
    t.pass("tests/ui/pass/*.rs");
    t.compile_fail("tests/ui/fail/*.rs");
}

#[greenstack::test(workers = 2)]
fn test_attribute_runs_the_body_as_a_coroutine() {
    assert!(
        greenstack::try_current().is_some(),
        "the body runs as a coroutine"
    );
    let h = greenstack::spawn!(name = "child", stack_size = 128 * 1024, move || {
        greenstack::current().name().map(str::to_owned)
    });
    assert_eq!(h.join().unwrap().as_deref(), Some("child"));
}

#[greenstack::test]
fn test_attribute_accepts_result() -> Result<(), String> {
    let v = greenstack::spawn!(|| 21 * 2)
        .join()
        .map_err(|_| "panicked".to_string())?;
    if v == 42 {
        Ok(())
    } else {
        Err(format!("got {v}"))
    }
}
