def test_step_after_a_failed_step_is_upstream_failed(home, write_job):
    write_job("j.py", """
        a = shell("a", "exit 3")
        b = shell("b", "true", after=["a"])
        j = job("j", [a, b])
    """)
    run = home.run_now("j")
    assert run.state == "failed"
    assert run.step("a").reason.summary == "exit code 3"
    assert run.step("b").state == "upstream_failed"
