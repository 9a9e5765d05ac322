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

mod failing_main {
    #[greenstack::main(workers = 1)]
    pub fn main() -> Result<(), String> {
        Err("the error main returns".to_string())
    }
}

mod panicking_main {
    #[greenstack::main(workers = 1)]
    pub fn main() {
        panic!("main's own panic");
    }
}

/// As with std's `main`: an `Err` from `main` makes a failure exit code
/// (after "Error: ..." on stderr), a panic resumes in the caller.
#[test]
fn main_reports_an_err_as_failure_and_resumes_a_panic() {
    assert_eq!(failing_main::main(), std::process::ExitCode::FAILURE);
    let p = std::panic::catch_unwind(panicking_main::main).expect_err("main panicked");
    assert_eq!(p.downcast_ref::<&str>(), Some(&"main's own panic"));
}
