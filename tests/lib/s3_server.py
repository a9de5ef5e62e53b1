#!/usr/bin/env python3
"""A real S3-compatible server for the tests: moto's server mode (PyPI
`moto[server]`), on 127.0.0.1 and a free port chosen by the kernel.

Why moto: it is on a registry the test command can reach (PyPI), starts in
a second without a cluster, checks every request's SigV4 signature against
the user's secret, and enforces IAM user policies — so one user can be
forbidden to delete (the append-only test) while another may. MinIO is on
none of the registries; Ceph RGW (Debian) needs a cluster; s3s-fs (crates.io)
has one key and no policies.

Prints one JSON line on stdout once ready:
  {"endpoint": "http://127.0.0.1:PORT", "bucket": "...",
   "admin": "KEY:SECRET", "appender": "KEY:SECRET"}
`admin` may do anything; `appender` may do anything but delete. The server
runs until stdin is closed (the test that started it ends), or 2 hours.
"""

import json
import os
import sys
import threading

# The first N requests are not authenticated: exactly the setup below
# (2 users x create_user, create_access_key, put_user_policy). Everything
# after, the bucket's creation included, is signed and checked.
os.environ["INITIAL_NO_AUTH_ACTION_COUNT"] = "6"

import boto3  # noqa: E402
from moto.server import ThreadedMotoServer  # noqa: E402

BUCKET = sys.argv[1] if len(sys.argv) > 1 else "cinderblock-test"


def _fix_query_signing():
    """moto (5.2) checks a signature against the request's query as the web
    framework hands it over, already percent-decoded, so any signed request
    whose query holds a '/' (every ListObjectsV2 with a prefix, from boto3
    as well) is refused with SignatureDoesNotMatch. SigV4's canonical query
    encodes each name and value (RFC 3986 unreserved characters kept): the
    query is re-encoded that way before moto signs it again. Nothing else of
    moto's check changes: a wrong secret or an unsigned request still fails.
    """
    from urllib.parse import quote, unquote, urlsplit, urlunsplit

    from moto.iam import access_control

    original = access_control.IAMRequestBase._create_aws_request

    def create(self):
        parts = urlsplit(self._path)
        if parts.query:
            pairs = []
            for pair in parts.query.split("&"):
                k, sep, v = pair.partition("=")
                enc = lambda x: quote(unquote(x), safe="-_.~")  # noqa: E731
                pairs.append(enc(k) + sep + enc(v))
            self._path = urlunsplit(parts._replace(query="&".join(pairs)))
        return original(self)

    access_control.IAMRequestBase._create_aws_request = create


_fix_query_signing()


def main():
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{server._server.server_port}"
    common = dict(endpoint_url=endpoint, region_name="us-east-1")
    iam = boto3.client("iam", aws_access_key_id="setup", aws_secret_access_key="setup", **common)
    allow_all = {"Effect": "Allow", "Action": "s3:*", "Resource": "*"}
    deny_delete = {
        "Effect": "Deny",
        "Action": ["s3:DeleteObject", "s3:DeleteObjectVersion"],
        "Resource": "*",
    }
    keys = {}
    for user, statements in (("admin", [allow_all]), ("appender", [allow_all, deny_delete])):
        iam.create_user(UserName=user)
        k = iam.create_access_key(UserName=user)["AccessKey"]
        iam.put_user_policy(
            UserName=user,
            PolicyName="backup",
            PolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": statements}),
        )
        keys[user] = f'{k["AccessKeyId"]}:{k["SecretAccessKey"]}'
    key, secret = keys["admin"].split(":", 1)
    s3 = boto3.client("s3", aws_access_key_id=key, aws_secret_access_key=secret, **common)
    s3.create_bucket(Bucket=BUCKET)
    print(json.dumps({"endpoint": endpoint, "bucket": BUCKET, **keys}), flush=True)
    done = threading.Event()

    def watch_stdin():
        sys.stdin.read()
        done.set()

    threading.Thread(target=watch_stdin, daemon=True).start()
    done.wait(7200)
    server.stop()


if __name__ == "__main__":
    main()
