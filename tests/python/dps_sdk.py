"""Drives the official DPS SDKs against an azsim hub's Device Provisioning Service.

Run by tests/it/dps/python_sdk.rs; talks through JSON lines on stdout (one object per line,
key "event") and never prints a key or a token.

    dps_sdk.py SERVICE_CS_FILE CA_FILE ID_SCOPE PROVISIONING_HOST mqtt|websockets [CERT KEY]

The service side is azure-iothub-provisioningserviceclient (the SDK the Azure SDK's own
provisioning tests use): it creates, shows, updates, queries and deletes an individual
enrollment and an enrollment group. The device side is azure-iot-device: its
ProvisioningDeviceClient registers with the individual enrollment's key and with a key derived
from the group's, then its IoTHubDeviceClient connects to the assigned hub, sends telemetry
and reads its twin. Then the refusals: a wrong key, a disabled enrollment, an unknown
registration. With CERT and KEY (a self-signed device certificate whose CN is py-x509-dev) an
X.509 individual enrollment too: the service SDK enrolls the certificate, the device registers
with it and runs with it. The connection string is read from a file so it stays out of process
listings.
"""

import base64
import hashlib
import hmac
import json
import os
import sys
import traceback

from azure.iot.device import X509, IoTHubDeviceClient, Message, ProvisioningDeviceClient
from provisioningserviceclient import (
    BulkEnrollmentOperation,
    EnrollmentGroup,
    IndividualEnrollment,
    ProvisioningServiceClient,
    QuerySpecification,
)
from provisioningserviceclient.models import (
    AttestationMechanism,
    InitialTwin,
    ReprovisionPolicy,
    SymmetricKeyAttestation,
)


def emit(event, **fields):
    fields["event"] = event
    sys.stdout.write(json.dumps(fields, sort_keys=True) + "\n")
    sys.stdout.flush()


def derive(group_key, registration_id):
    mac = hmac.new(base64.b64decode(group_key), registration_id.encode("utf-8"), hashlib.sha256)
    return base64.b64encode(mac.digest()).decode("ascii")


class Ctx:
    def __init__(self, cs_file, ca_file, id_scope, host, websockets):
        with open(cs_file, encoding="utf-8") as f:
            self.service = ProvisioningServiceClient.create_from_connection_string(f.read().strip())
        with open(ca_file, encoding="utf-8") as f:
            self.ca = f.read()
        self.id_scope = id_scope
        self.host = host
        self.websockets = websockets

    def register(self, registration_id, key, payload=None, x509=None):
        common = dict(
            provisioning_host=self.host,
            registration_id=registration_id,
            id_scope=self.id_scope,
            server_verification_cert=self.ca,
            websockets=self.websockets,
        )
        if x509 is not None:
            client = ProvisioningDeviceClient.create_from_x509_certificate(x509=x509, **common)
        else:
            client = ProvisioningDeviceClient.create_from_symmetric_key(symmetric_key=key, **common)
        if payload is not None:
            client.provisioning_payload = payload
        return client.register()

    def run_device(self, result, key, x509=None):
        state = result.registration_state
        common = dict(
            hostname=state.assigned_hub,
            device_id=state.device_id,
            server_verification_cert=self.ca,
            websockets=self.websockets,
            connection_retry=False,
        )
        if x509 is not None:
            client = IoTHubDeviceClient.create_from_x509_certificate(x509=x509, **common)
        else:
            client = IoTHubDeviceClient.create_from_symmetric_key(symmetric_key=key, **common)
        client.connect()
        client.send_message(Message(json.dumps({"provisioned": True})))
        twin = client.get_twin()
        client.shutdown()
        return twin


def registered(name, result, twin=None):
    state = result.registration_state
    emit(
        name,
        status=result.status,
        device_id=state.device_id,
        assigned_hub=state.assigned_hub,
        substatus=state.sub_status,
        payload=json.loads(state.response_payload),
        has_etag=bool(state.etag),
        twin=twin,
    )


def refused(name, fn):
    try:
        fn()
    except Exception as e:  # the SDK's ClientError, caused by a ServiceError naming the status
        chain, cause = [], e
        while cause is not None:
            chain.append("%s: %s" % (type(cause).__name__, cause))
            cause = cause.__cause__
        emit(name, error=" <- ".join(chain)[:400])
        return
    emit("error", step=name, error="registration succeeded but should have been refused")


def individual(ctx):
    svc = ctx.service
    att = AttestationMechanism(type="symmetricKey", symmetric_key=SymmetricKeyAttestation())
    twin = InitialTwin.create(tags={"site": "lab"}, desired_properties={"interval": 5})
    enrollment = IndividualEnrollment.create(
        "py-dps-1", att, device_id="py-dps-device", initial_twin=twin
    )
    created = svc.create_or_update(enrollment)
    key = created.attestation.symmetric_key.primary_key
    emit(
        "enrollment_created",
        registration_id=created.registration_id,
        device_id=created.device_id,
        status=created.provisioning_status,
        has_keys=bool(key and created.attestation.symmetric_key.secondary_key),
        has_etag=bool(created.etag),
    )
    shown = svc.get_individual_enrollment("py-dps-1")
    emit("enrollment_shown", registration_id=shown.registration_id, same_etag=shown.etag == created.etag,
         tags=shown.initial_twin.tags if shown.initial_twin else None)
    mech = svc.get_individual_enrollment_attestation_mechanism("py-dps-1")
    emit("attestation_shown", type=mech.type, same_key=mech.symmetric_key.primary_key == key)

    result = ctx.register("py-dps-1", key, payload={"firmware": "1.2.3"})
    twin = ctx.run_device(result, key)
    registered("registered_individual", result, twin)

    again = ctx.register("py-dps-1", key)
    registered("reregistered_individual", again)

    state = svc.get_registration_state("py-dps-1")
    emit("registration_state", device_id=state.device_id, status=state.status,
         assigned_hub=state.assigned_hub)

    refused("refused_wrong_key", lambda: ctx.register("py-dps-1", derive(key, "other")))

    shown.provisioning_status = "disabled"
    disabled = svc.create_or_update(shown)
    emit("enrollment_disabled", status=disabled.provisioning_status)
    refused("refused_disabled", lambda: ctx.register("py-dps-1", key))

    page = svc.create_individual_enrollment_query(QuerySpecification("*")).next()
    emit("enrollment_query", ids=sorted(e.registration_id for e in page))

    sym = AttestationMechanism(type="symmetricKey", symmetric_key=SymmetricKeyAttestation())
    bulk = BulkEnrollmentOperation("create", [IndividualEnrollment.create(r, sym) for r in ("py-bulk-1", "py-bulk-2")])
    result = svc.run_bulk_operation(bulk)
    again = svc.run_bulk_operation(bulk)
    emit("bulk", ok=result.is_successful, again_ok=again.is_successful,
         again_errors=sorted(e.registration_id for e in again.errors))
    svc.run_bulk_operation(BulkEnrollmentOperation("delete", bulk.enrollments))

    svc.delete_registration_state_by_param("py-dps-1")
    svc.delete_individual_enrollment_by_param("py-dps-1")
    try:
        svc.get_individual_enrollment("py-dps-1")
        emit("error", step="deleted", error="enrollment still there")
    except Exception as e:
        emit("enrollment_deleted", error=str(e)[:200])


def group(ctx):
    svc = ctx.service
    group_key = base64.b64encode(os.urandom(64)).decode("ascii")
    att = AttestationMechanism(
        type="symmetricKey",
        symmetric_key=SymmetricKeyAttestation(primary_key=group_key, secondary_key=group_key),
    )
    g = EnrollmentGroup.create(
        "py-group", att, reprovision_policy=ReprovisionPolicy(update_hub_assignment=True, migrate_device_data=True)
    )
    created = svc.create_or_update(g)
    emit("group_created", group_id=created.enrollment_group_id, status=created.provisioning_status)
    emit("group_shown", group_id=svc.get_enrollment_group("py-group").enrollment_group_id)
    page = svc.create_enrollment_group_query(QuerySpecification("*")).next()
    emit("group_query", ids=sorted(e.enrollment_group_id for e in page))

    device_key = derive(group_key, "py-grp-dev-1")
    result = ctx.register("py-grp-dev-1", device_key)
    twin = ctx.run_device(result, device_key)
    registered("registered_group", result, twin)
    # The SDK's own create_registration_state_query fails in 1.2.0 (it passes `raw` twice to
    # the generated client), so the generated client is called as that query would call it.
    states = svc._runtime_client.query_device_registration_states("py-group")
    emit("group_registrations", ids=sorted(s.registration_id for s in states))

    refused("refused_unknown", lambda: ctx.register("py-nobody", derive(group_key, "someone-else")))

    svc.delete_enrollment_group_by_param("py-group")
    try:
        svc.get_enrollment_group("py-group")
        emit("error", step="group_deleted", error="group still there")
    except Exception as e:
        emit("group_deleted", error=str(e)[:200])


def x509_individual(ctx, cert_file, key_file):
    svc = ctx.service
    with open(cert_file, encoding="utf-8") as f:
        pem = f.read()
    att = AttestationMechanism.create_with_x509_client_certs(pem)
    created = svc.create_or_update(IndividualEnrollment.create("py-x509-dev", att))
    info = created.attestation.x509.client_certificates.primary.info
    emit("x509_enrollment_created", attestation=created.attestation.type,
         has_thumbprint=bool(info and info.sha1_thumbprint))
    x509 = X509(cert_file=cert_file, key_file=key_file)
    result = ctx.register("py-x509-dev", None, x509=x509)
    twin = ctx.run_device(result, None, x509=x509)
    registered("registered_x509", result, twin)
    svc.delete_individual_enrollment_by_param("py-x509-dev")


def main():
    cs_file, ca_file, id_scope, host, transport = sys.argv[1:6]
    ctx = Ctx(cs_file, ca_file, id_scope, host, transport == "websockets")
    try:
        individual(ctx)
        group(ctx)
        if len(sys.argv) > 7:
            x509_individual(ctx, sys.argv[6], sys.argv[7])
    except Exception as e:
        traceback.print_exc()
        emit("error", error="%s: %s" % (type(e).__name__, str(e)[:500]))
        sys.exit(1)
    emit("done")


if __name__ == "__main__":
    main()
