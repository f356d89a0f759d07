"""Drives file upload with the official Python SDKs against an azsim hub: azure-iot-device asks
the hub for a blob SAS URI (get_storage_info_for_blob) and reports the outcome
(notify_blob_upload_status); azure-storage-blob uploads the bytes to the hub's blob endpoint and
reads them back.

Run by tests/it/hub_file_upload.rs; talks to it through JSON lines on stdout (one object per
line, key "event") and never prints a key, a token or a SAS.

    file_upload.py CS_FILE CA_FILE

Scenarios, in turn:
  small     a 11-byte blob in one Put Blob, read back, notified as a success
  blocks    40 KiB of varied bytes uploaded as 4 KiB blocks (Put Block x10 + Put Block List),
            read back whole and as a range, notified as a success
  failed    an upload reported as failed (no blob written): notified with isSuccess false
  reuse     notifying the same correlation id again is refused by the hub
  tampered  the SAS with its signature changed is refused by the blob endpoint (403)

The device SDK's HTTPS calls go to the connection string's HostName, port included, so the hub
may listen on any port. The CA is trusted through REQUESTS_CA_BUNDLE (set by the test).
"""

import hashlib
import json
import sys

from azure.core.exceptions import HttpResponseError
from azure.iot.device import IoTHubDeviceClient
from azure.storage.blob import BlobClient


def emit(event, **fields):
    fields["event"] = event
    sys.stdout.write(json.dumps(fields, sort_keys=True) + "\n")
    sys.stdout.flush()


def sas_url(info):
    return "https://{}/{}/{}{}".format(
        info["hostName"], info["containerName"], info["blobName"], info["sasToken"]
    )


def storage_info(client, name):
    info = client.get_storage_info_for_blob(name)
    emit(
        "storage_info",
        name=name,
        host_name=info["hostName"],
        container=info["containerName"],
        blob_name=info["blobName"],
        sas_starts=info["sasToken"][:18],
    )
    return info


def small(client):
    info = storage_info(client, "small.txt")
    data = b"hello world"
    blob = BlobClient.from_blob_url(sas_url(info))
    blob.upload_blob(data, overwrite=True)
    back = blob.download_blob().readall()
    client.notify_blob_upload_status(info["correlationId"], True, 201, "uploaded by python")
    emit("small_done", size=len(back), equal=back == data, sha256=hashlib.sha256(data).hexdigest())
    return info


def blocks(client):
    info = storage_info(client, "dir/blocks.bin")
    data = bytes((i * 7 + i // 256) % 251 for i in range(40 * 1024))
    blob = BlobClient.from_blob_url(
        sas_url(info), max_single_put_size=4 * 1024, max_block_size=4 * 1024
    )
    blob.upload_blob(data, overwrite=True)
    back = blob.download_blob().readall()
    part = blob.download_blob(offset=1000, length=5000).readall()
    props = blob.get_blob_properties()
    client.notify_blob_upload_status(info["correlationId"], True, 201, "uploaded in blocks")
    emit(
        "blocks_done",
        size=len(back),
        equal=back == data,
        range_equal=part == data[1000:6000],
        properties_size=props.size,
        blob_type=str(props.blob_type),
        sha256=hashlib.sha256(data).hexdigest(),
    )


def failed(client):
    info = storage_info(client, "never-written.txt")
    client.notify_blob_upload_status(info["correlationId"], False, 500, "the upload failed")
    emit("failed_done")


def reuse(client, info):
    try:
        client.notify_blob_upload_status(info["correlationId"], True, 201, "again")
    except Exception as e:  # the SDK raises its own ServiceError for a 4xx
        emit("reuse_refused", error=type(e).__name__)
        return
    emit("reuse_accepted")


def tampered(client):
    info = storage_info(client, "tampered.txt")
    url = sas_url(info)
    start = url.index("sig=") + 4
    url = url[:start] + ("A" if url[start] != "A" else "B") + url[start + 1 :]
    try:
        BlobClient.from_blob_url(url).upload_blob(b"x", overwrite=True)
    except HttpResponseError as e:
        emit("tampered_refused", status=e.status_code, code=e.error_code)
    else:
        emit("tampered_accepted")
    client.notify_blob_upload_status(info["correlationId"], False, 403, "refused")


def main():
    cs_file, ca_file = sys.argv[1], sys.argv[2]
    with open(cs_file, encoding="utf-8") as f:
        cs = f.read().strip()
    with open(ca_file, encoding="utf-8") as f:
        ca = f.read()
    client = IoTHubDeviceClient.create_from_connection_string(cs, server_verification_cert=ca)
    info = small(client)
    blocks(client)
    failed(client)
    reuse(client, info)
    tampered(client)
    client.shutdown()
    emit("done")


if __name__ == "__main__":
    try:
        main()
    except Exception as e:  # report, do not hide: the test prints it
        emit("error", name=type(e).__name__, message=str(e)[:500])
        sys.exit(1)
