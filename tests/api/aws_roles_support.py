"""A stand-in for AWS with IAM enforced: moto's server as IAM, STS and S3 on loopback.

The server's user (``openmwaa-server``) may assume any role and read every bucket; the
roles ``reader-x`` (and its twin ``reader-x-too``) trust it and may read bucket X only;
``untrusting`` trusts someone else. Once set up, moto checks every call's signature and
the caller's policies (``/moto-api/reset-auth``), so a role's policy is enforced on its
credentials.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any

import boto3
import httpx
from live_server import free_port

ACCOUNT = "123456789012"
REGION = "us-east-1"
SERVER_USER = "openmwaa-server"
BUCKET_X = "role-bucket-x"
BUCKET_Y = "role-bucket-y"
ALLOWED = b"read with the execution role"
OTHER = b"not for this role"


def _policy(*statements: dict[str, Any]) -> str:
    return json.dumps({"Version": "2012-10-17", "Statement": list(statements)})


def _trust(principal: str) -> str:
    return _policy({"Effect": "Allow", "Principal": {"AWS": principal}, "Action": "sts:AssumeRole"})


@dataclass
class FakeAws:
    url: str
    process: subprocess.Popen[bytes]
    key_id: str = ""
    secret: str = ""

    def role(self, name: str) -> str:
        return f"arn:aws:iam::{ACCOUNT}:role/{name}"

    def server_env(self) -> dict[str, str]:
        """What ``openmwaa serve`` is given: its own key, and moto as every endpoint. No
        region (the server's is used) and no config files (nothing else is found)."""
        return {
            "AWS_ACCESS_KEY_ID": self.key_id,
            "AWS_SECRET_ACCESS_KEY": self.secret,
            "AWS_ENDPOINT_URL": self.url,
            "AWS_CONFIG_FILE": os.devnull,
            "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        }

    def client(self, service: str, **keys: str) -> Any:
        keys = keys or {"aws_access_key_id": self.key_id, "aws_secret_access_key": self.secret}
        return boto3.client(service, endpoint_url=self.url, region_name=REGION, **keys)

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def start_moto(objects: dict[tuple[str, str], bytes] | None = None) -> FakeAws:
    """moto on a free loopback port, set up as the module's docstring says, IAM enforced.
    ``objects``: more (bucket, key) -> content to put in the buckets first."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    aws = FakeAws(f"http://127.0.0.1:{port}", process)
    deadline = time.monotonic() + 30
    while True:
        try:
            httpx.get(f"{aws.url}/moto-api/", timeout=1)
            break
        except httpx.HTTPError:
            if time.monotonic() > deadline or process.poll() is not None:
                aws.stop()
                raise RuntimeError("moto's server did not start") from None
            time.sleep(0.1)
    setup = {"aws_access_key_id": "setup", "aws_secret_access_key": "setup"}
    iam, s3 = aws.client("iam", **setup), aws.client("s3", **setup)
    iam.create_user(UserName=SERVER_USER)
    key = iam.create_access_key(UserName=SERVER_USER)["AccessKey"]
    aws.key_id, aws.secret = key["AccessKeyId"], key["SecretAccessKey"]
    iam.put_user_policy(
        UserName=SERVER_USER,
        PolicyName="server",
        PolicyDocument=_policy(
            {"Effect": "Allow", "Action": "sts:AssumeRole", "Resource": "*"},
            {"Effect": "Allow", "Action": "s3:*", "Resource": "*"},
        ),
    )
    for role in ("reader-x", "reader-x-too"):
        iam.create_role(
            RoleName=role,
            AssumeRolePolicyDocument=_trust(f"arn:aws:iam::{ACCOUNT}:user/{SERVER_USER}"),
        )
        iam.put_role_policy(
            RoleName=role,
            PolicyName="read-x",
            PolicyDocument=_policy(
                {
                    "Effect": "Allow",
                    "Action": ["s3:GetObject", "s3:ListBucket"],
                    "Resource": [f"arn:aws:s3:::{BUCKET_X}", f"arn:aws:s3:::{BUCKET_X}/*"],
                }
            ),
        )
    iam.create_role(
        RoleName="untrusting",
        AssumeRolePolicyDocument=_trust(f"arn:aws:iam::{ACCOUNT}:user/someone-else"),
    )
    for bucket in (BUCKET_X, BUCKET_Y):
        s3.create_bucket(Bucket=bucket)
    s3.put_object(Bucket=BUCKET_X, Key="data/allowed.txt", Body=ALLOWED)
    s3.put_object(Bucket=BUCKET_Y, Key="data/other.txt", Body=OTHER)
    for (bucket, key_name), body in (objects or {}).items():
        s3.put_object(Bucket=bucket, Key=key_name, Body=body)
    # From here on moto checks signatures and policies of every call.
    httpx.post(f"{aws.url}/moto-api/reset-auth", content=b"0").raise_for_status()
    return aws
