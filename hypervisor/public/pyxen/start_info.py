"""How a domain process gets its start_info (pyxen's start_info page)."""

# A cold start: the start_info as JSON in this environment variable, the
# fds it names already open.
START_INFO_ENV = "PYXEN_START_INFO"
# A standby process: "<socket fd>:<hypervisor pid>"; start_info and fds come
# later as one message on that socket.
STANDBY_ENV = "PYXEN_STANDBY"
