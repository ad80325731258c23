"""`python -m nimbus.control_plane [--listen ADDR]`: the `nimbus-control-plane` service, in this process."""

if __name__ == "__main__":
    from nimbus._service import run

    run("control-plane")
