// Provisions devices through the hub's DPS over AMQP and AMQP over WebSockets with the official
// Node SDK (azure-iot-provisioning-device + azure-iot-provisioning-device-amqp, Amqp / AmqpWs),
// then connects each assigned device to its hub over AMQP (azure-iot-device-amqp) and sends one
// message.
//
// Run by tests/it/dps_amqp.rs; talks to it through JSON lines on stdout (one object per line,
// key "event") and never prints a key, a token or a certificate key.
//
//   node dps_amqp.js ID_SCOPE HOST CASES_FILE
//
// CASES_FILE is a JSON array run in order; each case is
//   { name, transport: "amqp" | "amqpws", registrationId,
//     key?  (a symmetric key: an individual enrollment's, or one derived from a group key),
//     certFile?, keyFile?  (an X.509 device: its certificate and key, PEM),
//     payload?  (custom allocation data sent with the register request),
//     expect: "assigned" | "refused" }
// and gives `registered` {name, assignedHub, deviceId, status, substatus, payload, ms} and, once
// its message is sent, `telemetry_sent` {name, messageId}; or, expected refused, `refused`
// {name, errorName, condition, description}. Anything else is an `error` and exit 1.
'use strict';

const fs = require('fs');
const { ProvisioningDeviceClient } = require('azure-iot-provisioning-device');
const { Amqp: DpsAmqp, AmqpWs: DpsAmqpWs } = require('azure-iot-provisioning-device-amqp');
const { SymmetricKeySecurityClient } = require('azure-iot-security-symmetric-key');
const device = require('azure-iot-device');
const { Amqp, AmqpWs } = require('azure-iot-device-amqp');

const STEP_TIMEOUT_MS = 30000;

function emit(event, fields) {
  process.stdout.write(JSON.stringify(Object.assign({ event }, fields || {})) + '\n');
}

function fail(step, err) {
  emit('error', { step, name: err && err.name, message: String((err && err.message) || err) });
  process.exit(1);
}

async function step(name, fn) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error('timed out after ' + STEP_TIMEOUT_MS + ' ms')), STEP_TIMEOUT_MS);
  });
  try {
    return await Promise.race([fn(), timeout]);
  } finally {
    clearTimeout(timer);
  }
}

// The X509SecurityClient interface azure-iot-provisioning-device documents (what
// azure-iot-security-x509's X509Security is): the registration id and the certificate.
function x509Security(registrationId, cert) {
  return {
    getRegistrationId: () => registrationId,
    getCertificate: (callback) => callback(null, cert),
  };
}

async function runCase(idScope, host, c) {
  const DpsTransport = { amqp: DpsAmqp, amqpws: DpsAmqpWs }[c.transport];
  const DeviceTransport = { amqp: Amqp, amqpws: AmqpWs }[c.transport];
  let security;
  let cert;
  if (c.certFile) {
    cert = { cert: fs.readFileSync(c.certFile, 'utf8'), key: fs.readFileSync(c.keyFile, 'utf8') };
    security = x509Security(c.registrationId, cert);
  } else {
    security = new SymmetricKeySecurityClient(c.registrationId, c.key);
  }
  const provisioning = ProvisioningDeviceClient.create(host, idScope, new DpsTransport(), security);
  if (c.payload !== undefined) {
    provisioning.setProvisioningPayload(c.payload);
  }
  const started = Date.now();
  let result;
  try {
    result = await step(c.name + ' register', () => provisioning.register());
  } catch (err) {
    if (c.expect !== 'refused') {
      fail(c.name + ' register', err);
    }
    emit('refused', {
      name: c.name,
      errorName: err && err.name,
      condition: err && err.condition,
      description: err && (err.description || err.message),
    });
    return;
  }
  if (c.expect !== 'assigned') {
    fail(c.name + ' register', new Error('registered, expected a refusal'));
  }
  emit('registered', {
    name: c.name,
    assignedHub: result.assignedHub,
    deviceId: result.deviceId,
    status: result.status,
    substatus: result.substatus,
    payload: result.payload,
    ms: Date.now() - started,
  });

  const cs = cert
    ? 'HostName=' + result.assignedHub + ';DeviceId=' + result.deviceId + ';x509=true'
    : 'HostName=' + result.assignedHub + ';DeviceId=' + result.deviceId + ';SharedAccessKey=' + c.key;
  const client = device.Client.fromConnectionString(cs, DeviceTransport);
  if (cert) {
    client.setOptions({ cert: cert.cert, key: cert.key });
  }
  await step(c.name + ' open', () => client.open()).catch((e) => fail(c.name + ' open', e));
  const msg = new device.Message(JSON.stringify({ provisionedOver: c.transport }));
  msg.messageId = 'dps-amqp-' + c.name;
  await step(c.name + ' sendEvent', () => client.sendEvent(msg)).catch((e) => fail(c.name + ' sendEvent', e));
  emit('telemetry_sent', { name: c.name, messageId: msg.messageId });
  await step(c.name + ' close', () => client.close()).catch((e) => fail(c.name + ' close', e));
}

async function main() {
  const [idScope, host, casesFile] = process.argv.slice(2);
  const cases = JSON.parse(fs.readFileSync(casesFile, 'utf8'));
  for (const c of cases) {
    await runCase(idScope, host, c);
  }
  emit('done');
  process.exit(0);
}

main().catch((e) => fail('main', e));
