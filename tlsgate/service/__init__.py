"""Running as a system service: sd_notify, socket activation and dropping root.

None of it needs libsystemd: the protocols are environment variables, inherited file
descriptors and datagrams (systemd's own `sd_notify(3)` and `sd_listen_fds(3)` document them as
stable interfaces for exactly this reason).
"""
