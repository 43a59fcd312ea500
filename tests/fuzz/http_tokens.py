"""Tokens of HTTP/1.1 the mutator splices into the HTTP targets' inputs (libFuzzer -dict): header names, codings,
and digits that are digits to str.isdigit() but not to int()."""

HTTP_TOKENS = [
    b"HTTP/1.1 ", b"HTTP/1.0 ", b"\r\n", b"\r\n\r\n", b"Content-Length: ", b"Transfer-Encoding: chunked",
    b"Content-Encoding: gzip", b"Connection: close", b"Connection: keep-alive", b"Accept-Encoding: gzip",
    b"HEAD ", b"POST ", b"GET ", b" HTTP/1.1\r\n", b"0\r\n\r\n", b";ext=1", b"\xb2", b"\xb3", b"\xb9", b"-1",
    b"0x", b"http://[", b"%", b"?", b"\x1f\x8b\x08\x00",
]
