"""`python -m nimbus.host_agent.main`: the `nimbus-host-agent` daemon, in this process."""

if __name__ == "__main__":
    from nimbus._service import run

    run("host-agent")
