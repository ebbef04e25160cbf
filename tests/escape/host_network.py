# Escape: reach listeners on the host's loopback: TCP, UDP and an abstract unix socket.
# Expect: every attempt fails; the host's listeners see nothing.
import socket
def attempt(name, fn):
    try:
        fn()
        print(name, "connected")
    except OSError as e:
        print(name, "->", type(e).__name__)
def tcp():
    s = socket.create_connection(("127.0.0.1", tcp_port), timeout=2)
    s.sendall(b"escaped")
def udp():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.sendto(b"escaped", ("127.0.0.1", udp_port))
def abstract():
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect("\0" + abstract_name)
    s.sendall(b"escaped")
attempt("tcp", tcp)
attempt("udp", udp)
attempt("abstract", abstract)
