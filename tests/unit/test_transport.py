import base64
import hashlib
import hmac
import io
import socket
import threading
import time
from pathlib import Path

import pytest

from provision.errors import ConnectError, HostKeyError, RemoteError
from provision.inventory.hosts import Host
from provision.ssh.transport import Connector, Retry, SshTransport, Timeouts, Trust, quote_command, sudo_wrap
from tests.sshd import available, start_sshd

pytestmark = pytest.mark.skipif(not available(), reason="needs root and /usr/sbin/sshd")


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    server = start_sshd(tmp_path_factory.mktemp("sshd"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def trust(tmp_path, sshd):
    own = tmp_path / "own_known_hosts"
    own.write_text(sshd.known_hosts_line())
    return Trust(own_known_hosts=own, user_known_hosts=tmp_path / "user_known_hosts")


def host_for(sshd, **changes):
    values = dict(name="box", address=sshd.address, port=sshd.port, user="root", keys=(str(sshd.client_key),))
    values.update(changes)
    return Host(**values)


FAST = Timeouts(connect=2, banner=1, auth=2, command=10)


@pytest.fixture
def box(sshd, trust):
    with SshTransport(host_for(sshd), trust=trust, timeouts=FAST) as transport:
        yield transport


def test_run_returns_output_and_reuses_the_connection(box):
    first = box.run(["echo", "hello"])
    client = box._client
    second = box.run("echo $((6 * 7)) >&2; exit 3", check=False)
    assert (first.stdout, first.exit_code) == ("hello\n", 0)
    assert (second.stderr, second.exit_code) == ("42\n", 3)
    assert box._client is client


def test_aes_gcm_is_negotiated(box):
    box.run(["true"])
    assert box._client.get_transport().local_cipher == "aes128-gcm@openssh.com"


def test_nonzero_exit_raises_remote_error_with_stderr(box):
    with pytest.raises(RemoteError, match="exited 2: .*No such file"):
        box.run(["ls", "/no/such/dir"])


@pytest.mark.parametrize(
    "word",
    ["$(touch /tmp/pwned-fleet)", "; touch /tmp/pwned-fleet", "`touch /tmp/pwned-fleet`", "a'b\"c\n$HOME"],
)
def test_arguments_cannot_inject_commands(box, word):
    result = box.run(["printf", "%s", word])
    assert result.stdout == word
    assert box.run("test -e /tmp/pwned-fleet", check=False).exit_code == 1


def test_hostile_remote_path_is_a_literal_file_name(box, tmp_path):
    target = str(tmp_path / "x; touch pwned-fleet $(id)")
    assert box.put_stream(io.BytesIO(b"payload" * 1000), target, mode=0o600) == 7000
    assert Path(target).read_bytes() == b"payload" * 1000
    assert not (tmp_path / "pwned-fleet").exists()
    back = tmp_path / "back"
    assert box.get(target, back) == 7000 and back.read_bytes() == b"payload" * 1000
    with pytest.raises(RemoteError, match="cannot read"):
        box.get(str(tmp_path / "missing"), tmp_path / "nothing")
    assert not (tmp_path / "nothing.part").exists()


def test_sudo_password_goes_on_stdin_never_argv_nor_to_the_command(sshd, trust):
    with SshTransport(host_for(sshd), trust=trust, timeouts=FAST, become_password="hunter2-secret") as box:
        result = box.run("cat; ps -eo args", sudo=True)  # root: sudo needs no password, so it stays unread
    assert "hunter2-secret" not in result.stdout + result.stderr
    assert "sudo" in result.stdout
    assert "hunter2-secret" not in (sshd.dir / "sshd.log").read_text()


def test_sudo_wrap_quotes_the_command():
    assert (
        sudo_wrap("echo 'a'", with_password=True)
        == "sudo -S -p '' -- sh -c 'exec </dev/null; echo '\"'\"'a'\"'\"''"
    )
    assert sudo_wrap("id", with_password=False).startswith("sudo -n -- sh -c")
    assert quote_command(["ls", "a b", "$x"]) == "ls 'a b' '$x'"


def test_command_timeout(box):
    started = time.monotonic()
    with pytest.raises(RemoteError, match="timed out after 0.5 s"):
        box.run(["sleep", "5"], timeout=0.5)
    assert time.monotonic() - started < 2
    assert box.run(["true"]).ok  # the connection survives a timed-out command


def test_open_exec_streams(box):
    with box.open_exec(["sh", "-c", "while read line; do echo got:$line; done"], timeout=5) as proc:
        proc.stdin.write(b"one\ntwo\n")
        proc.stdin.flush()
        assert proc.stdout.readline() == b"got:one\n"
        proc.close_stdin()
        assert proc.stdout.read() == b"got:two\n"
        assert proc.wait(5) == 0


def test_reconnect(box):
    box.run(["true"])
    old = box._client
    box.reconnect()
    assert box._client is not old and box.run(["true"]).ok


# ---- host keys


def test_unknown_host_key_is_refused(sshd, tmp_path):
    trust = Trust(own_known_hosts=tmp_path / "own", user_known_hosts=tmp_path / "user")
    with pytest.raises(HostKeyError, match=r"unknown host key ssh-ed25519 SHA256:\S+, refusing") as info:
        SshTransport(host_for(sshd), trust=trust, timeouts=FAST).connect()
    assert "--accept-new" in info.value.hint
    assert not (tmp_path / "own").exists()


def test_accept_new_pins_to_the_tools_known_hosts(sshd, tmp_path):
    own = tmp_path / "home" / "known_hosts"
    trust = Trust(own_known_hosts=own, user_known_hosts=tmp_path / "user", accept_new=True)
    with SshTransport(host_for(sshd), trust=trust, timeouts=FAST) as box:
        assert box.run(["true"]).ok
    assert own.read_text() == sshd.known_hosts_line()
    assert own.stat().st_mode & 0o777 == 0o600
    strict = Trust(own_known_hosts=own, user_known_hosts=tmp_path / "user")
    with SshTransport(host_for(sshd), trust=strict, timeouts=FAST) as box:
        assert box.run(["true"]).ok
    assert own.read_text() == sshd.known_hosts_line()  # pinned once


def test_user_and_inventory_known_hosts_are_honoured(sshd, tmp_path):
    user = tmp_path / "user"
    user.write_text(sshd.known_hosts_line())
    with SshTransport(host_for(sshd), trust=Trust(tmp_path / "own", user), timeouts=FAST) as box:
        assert box.run(["true"]).ok
    extra = tmp_path / "sim_known_hosts"
    extra.write_text(sshd.known_hosts_line())
    host = host_for(sshd, known_hosts=(str(extra),))
    with SshTransport(host, trust=Trust(tmp_path / "own", tmp_path / "none"), timeouts=FAST) as box:
        assert box.run(["true"]).ok


def hashed(line: str, salt: bytes) -> str:
    """`line` with its host name hashed as `ssh-keygen -H` / HashKnownHosts write it."""
    name, rest = line.split(" ", 1)
    digest = hmac.new(salt, name.encode(), hashlib.sha1).digest()
    return f"|1|{base64.b64encode(salt).decode()}|{base64.b64encode(digest).decode()} {rest}"


def test_hashed_entry_among_many_in_the_users_known_hosts_is_honoured(sshd, tmp_path):
    other = "AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"
    lines = [
        hashed(f"10.9.{i // 250}.{i % 250} ssh-ed25519 {other}\n", i.to_bytes(2, "big") * 10)
        for i in range(300)
    ]
    user = tmp_path / "user"
    user.write_text("".join(lines[:150]) + hashed(sshd.known_hosts_line(), b"s" * 20) + "".join(lines[150:]))
    trust = Trust(tmp_path / "own", user)
    with Connector(trust, timeouts=FAST) as connector:
        hosts = [host_for(sshd, name=f"box{i}") for i in range(4)]
        assert all(connector.transport(h).run(["true"]).ok for h in hosts)


def test_a_key_in_the_users_known_hosts_wins_over_the_tools_own(sshd, tmp_path):
    """As paramiko (and ssh) decide: the user's and the inventory's files first, the tool's file after."""
    other = "AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"
    user, own = tmp_path / "user", tmp_path / "own"
    user.write_text(f"[{sshd.address}]:{sshd.port} ssh-ed25519 {other}\n")
    own.write_text(sshd.known_hosts_line())
    with pytest.raises(HostKeyError, match="HOST KEY CHANGED"):
        SshTransport(host_for(sshd), trust=Trust(own, user), timeouts=FAST).connect()
    user.write_text(sshd.known_hosts_line())  # the file changed: read again
    with SshTransport(host_for(sshd), trust=Trust(own, user), timeouts=FAST) as box:
        assert box.run(["true"]).ok


def test_changed_host_key_is_refused_even_with_accept_new(sshd, tmp_path):
    own = tmp_path / "own"
    other = "AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"
    name = f"[{sshd.address}]:{sshd.port}"
    own.write_text(f"{name} ssh-ed25519 {other}\n")
    trust = Trust(own_known_hosts=own, user_known_hosts=tmp_path / "user", accept_new=True)
    with pytest.raises(HostKeyError) as info:
        SshTransport(host_for(sshd), trust=trust, timeouts=FAST).connect()
    message = str(info.value)
    assert "HOST KEY CHANGED" in message
    assert message.count("SHA256:") == 2
    assert f"ssh-keygen -R '{name}' -f {own}" in info.value.hint
    assert own.read_text() == f"{name} ssh-ed25519 {other}\n"


# ---- failures


def test_refused_connection_is_retried_then_reported(sshd, trust):
    from tests.sshd import free_port

    host = host_for(sshd, port=free_port(sshd.address))
    started = time.monotonic()
    with pytest.raises(ConnectError, match="connection refused") as info:
        SshTransport(host, trust=trust, timeouts=FAST, retry=Retry(attempts=3, backoff=0.1)).connect()
    assert 0.1 < time.monotonic() - started < 2
    assert "sshd" in info.value.hint


def test_silent_server_hits_the_banner_timeout(trust):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    accepted = []

    def accept_and_stay_silent():
        try:
            while True:
                accepted.append(listener.accept()[0])
        except OSError:
            pass  # the listener was closed: the test is over

    thread = threading.Thread(target=accept_and_stay_silent, daemon=True)
    thread.start()
    host = Host(name="mute", address="127.0.0.1", port=listener.getsockname()[1], user="root")
    started = time.monotonic()
    try:
        with pytest.raises(ConnectError, match="mute"):
            SshTransport(
                host, trust=trust, timeouts=Timeouts(connect=1, banner=0.3), retry=Retry(attempts=2)
            ).connect()
        assert time.monotonic() - started < 3
    finally:
        listener.shutdown(socket.SHUT_RDWR)
        listener.close()
        thread.join(2)
        for sock in accepted:
            sock.close()


def test_wrong_key_is_an_authentication_error(sshd, trust, tmp_path):
    from tests.sshd import keygen

    keygen(tmp_path / "stranger")
    with pytest.raises(ConnectError, match="authentication failed") as info:
        SshTransport(host_for(sshd, keys=(str(tmp_path / "stranger"),)), trust=trust, timeouts=FAST).connect()
    assert not isinstance(info.value, HostKeyError)


def test_proxy_jump_through_another_box(sshd, trust):
    jump = host_for(sshd, name="bastion")
    target = host_for(sshd, name="inner", proxy_jump="bastion")
    with Connector(trust, timeouts=FAST, lookup={"bastion": jump}.get) as connector:
        box = connector.transport(target)
        assert box.run(["echo", "via"]).stdout == "via\n"
        assert box._jump is not None and box._jump.host.name == "bastion"
        assert connector.transport(target) is box


def test_stdin_for_a_command_that_does_not_read_it(box):
    for _ in range(5):
        assert box.run(["true"], stdin=b"x" * 200000).ok


def test_put_stream_of_a_large_file_round_trips(box, tmp_path):
    import hashlib
    import os

    data = os.urandom(8 * 1024 * 1024 + 123)
    target = tmp_path / "big.bin"
    assert box.put_stream(io.BytesIO(data), str(target)) == len(data)
    assert hashlib.sha256(target.read_bytes()).digest() == hashlib.sha256(data).digest()


def test_a_command_printing_without_end_is_stopped_at_the_output_cap(box):
    """What a box prints is read up to a cap, then refused (memory stays bounded)."""
    from provision.errors import FactError

    started = time.monotonic()
    with pytest.raises(FactError, match="printed more than 1 MiB; stopped reading"):
        box.run("yes sophon-fleet", max_output=1 << 20)
    assert time.monotonic() - started < 5
    assert box.run(["echo", "still usable"]).stdout == "still usable\n"


class HalfDeadRelay:
    """A TCP relay to the sshd that, once the client stops sending (FIN), forwards nothing more either way
    and never closes: the client's writes then fail at once (EPIPE) while its reader sees no end, so
    paramiko still counts the connection active — the moment a link dies under a push."""

    def __init__(self, address: str, port: int) -> None:
        self.listener = socket.create_server((address, 0))
        self.port = self.listener.getsockname()[1]
        self.upstream = (address, port)
        self.sockets: list[socket.socket] = [self.listener]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        client, _ = self.listener.accept()
        server = socket.create_connection(self.upstream)
        self.sockets += [client, server]
        threading.Thread(target=self._pump, args=(server, client), daemon=True).start()
        self._pump(client, server)

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass  # closed at the end of the test

    def close(self) -> None:
        for sock in self.sockets:
            sock.close()


def test_a_connection_dead_under_an_open_channel_raises_only_our_errors(sshd, tmp_path):
    """Issue 13: on a channel whose connection died (paramiko's packet writer raises EOFError), send, a
    write through its stdin file (remote chat's) and close_stdin raise ChannelBroken, and close, which push
    calls after a ChannelBroken, raises nothing (it raised EOFError: "internal error" in the push path); a
    command on that connection is a ConnectError. No library exception leaves the SSH seam."""
    from provision.errors import ChannelBroken

    relay = HalfDeadRelay(sshd.address, sshd.port)
    own = tmp_path / "own"
    own.write_text(f"[{sshd.address}]:{relay.port} {sshd.host_key_pub}\n")
    trust = Trust(own_known_hosts=own, user_known_hosts=tmp_path / "user_known_hosts")
    try:
        with SshTransport(host_for(sshd, port=relay.port), trust=trust, timeouts=FAST) as box:
            channel = box.open_exec("cat")
            channel.send(b"ping\n")
            assert channel.recv_line() == b"ping\n"
            box._client.get_transport().sock.shutdown(socket.SHUT_WR)  # the link dies under the channel
            with pytest.raises(ChannelBroken):
                channel.send(b"x" * 65536)
            with pytest.raises(ChannelBroken):  # the file interface (remote chat's) too
                channel.stdin.write(b"x" * 65536)
                channel.stdin.flush()
            with pytest.raises(ChannelBroken):
                channel.close_stdin()
            channel.close()  # what push does after a ChannelBroken: no error of its own
            with pytest.raises(ConnectError):
                box.run(["true"])
    finally:
        relay.close()
