// Drives the official Node.js SDKs against an azsim hub: azure-iot-device over MQTT and over
// MQTT/WebSockets, azure-iothub (Registry and Twin over REST, Client over AMQP), and DPS through
// azure-iot-provisioning-device-mqtt with a symmetric key.
//
// Run by tests/it/service_node_sdk.rs; talks to it through JSON lines on stdout (one object per
// line, key "event") and never prints a key, a token or a connection string.
//
//   node sdk.js service SERVICE_CS_FILE DEVICE_ID TRANSPORT      the scenario below
//   node sdk.js dps ID_SCOPE HOST REGISTRATION_ID KEY_FILE       register, connect, send
//   node sdk.js x509 HOST DEVICE_ID CERT_FILE KEY_FILE TRANSPORT  connect with a certificate, send
//
// service: the Registry creates DEVICE_ID and reads it back; the device connects over TRANSPORT
// (mqtt | mqttws) and sends telemetry with properties; it reads its twin and patches reported
// properties; the service updates the desired properties (the device gets the patch), sends a
// C2D message over AMQP (the device completes it) and invokes a direct method (the device
// answers); the Registry deletes the device and fails to get it with DeviceNotFoundError.
// Secrets are read from files so they stay out of process listings. The SDKs only dial the
// Azure ports (8883 MQTT, 443 WebSockets and REST, 5671 AMQP), which the hub under test has.
'use strict';

const fs = require('fs');
const device = require('azure-iot-device');
const { Mqtt, MqttWs } = require('azure-iot-device-mqtt');
const iothub = require('azure-iothub');

const STEP_TIMEOUT_MS = 20000;

function emit(event, fields) {
  process.stdout.write(JSON.stringify(Object.assign({ event }, fields || {})) + '\n');
}

function fail(step, err) {
  emit('error', { step, name: err && err.name, message: String((err && err.message) || err) });
  process.exit(1);
}

// Resolves with the first value `register` hands to its callback, or fails the step.
function waitFor(step, register) {
  return new Promise((resolve) => {
    const timer = setTimeout(() => {
      emit('timeout', { step });
      process.exit(1);
    }, STEP_TIMEOUT_MS);
    register((value) => {
      clearTimeout(timer);
      resolve(value);
    });
  });
}

function properties(msg) {
  const out = {};
  for (let i = 0; i < msg.properties.count(); i++) {
    const p = msg.properties.getItem(i);
    out[p.key] = p.value;
  }
  return out;
}

async function step(name, fn) {
  try {
    return await fn();
  } catch (err) {
    fail(name, err);
  }
}

async function service(csFile, deviceId, transportName) {
  const serviceCs = fs.readFileSync(csFile, 'utf8').trim();
  const host = iothub.ConnectionString.parse(serviceCs).HostName;
  const Transport = { mqtt: Mqtt, mqttws: MqttWs }[transportName];
  if (!Transport) fail('args', new Error('transport is mqtt or mqttws'));
  const registry = iothub.Registry.fromConnectionString(serviceCs);

  // Registry: create, then read back.
  const created = (await step('create', () => registry.create({ deviceId }))).responseBody;
  const keys = created.authentication && created.authentication.symmetricKey;
  emit('created', {
    deviceId: created.deviceId,
    status: created.status,
    type: created.authentication && created.authentication.type,
    hasKeys: !!(keys && keys.primaryKey && keys.secondaryKey),
    etag: !!created.etag,
  });
  const got = (await step('get', () => registry.get(deviceId))).responseBody;
  emit('device', { deviceId: got.deviceId, sameKey: got.authentication.symmetricKey.primaryKey === keys.primaryKey });
  const listed = (await step('list', () => registry.list())).responseBody;
  emit('listed', { found: listed.some((d) => d.deviceId === deviceId) });
  await bulk(registry, deviceId + '-bulk');

  // The device connects with a connection string built from the key the Registry returned.
  const deviceCs = 'HostName=' + host + ';DeviceId=' + deviceId + ';SharedAccessKey=' + keys.primaryKey;
  const client = device.Client.fromConnectionString(deviceCs, Transport);
  await step('open', () => client.open());
  emit('connected', { transport: Transport.name });

  const msg = new device.Message(JSON.stringify({ temperature: 22.5 }));
  msg.messageId = 'node-msg-1';
  msg.correlationId = 'node-corr-1';
  msg.contentType = 'application/json';
  msg.contentEncoding = 'utf-8';
  msg.properties.add('alert', 'hot');
  msg.properties.add('source', 'node sdk');
  await step('sendEvent', () => client.sendEvent(msg));
  emit('telemetry_sent', { messageId: msg.messageId });

  // Twin: get, reported patch, desired patches.
  const twin = await step('getTwin', () => client.getTwin());
  emit('twin', {
    desiredVersion: twin.properties.desired.$version,
    reportedVersion: twin.properties.reported.$version,
  });
  await step('reported', () => new Promise((resolve, reject) => {
    twin.properties.reported.update({ firmware: 'node-1.18.4', sdk: { name: 'node' } }, (err) => (err ? reject(err) : resolve()));
  }));
  emit('reported_patched');

  const desiredPatches = [];
  let onDesired = null;
  twin.on('properties.desired', (patch) => {
    desiredPatches.push(patch);
    if (onDesired && patch.interval !== undefined) onDesired(patch);
  });

  // C2D and methods: handlers before the service acts.
  let onC2d = null;
  client.on('message', (m) => {
    client.complete(m, (err) => {
      if (err) fail('complete', err);
      onC2d(m);
    });
  });
  let onMethod = null;
  client.onDeviceMethod('reboot', (request, response) => {
    response.send(201, { echo: request.payload, method: request.methodName }, (err) => {
      if (err) fail('method response', err);
      onMethod(request);
    });
  });
  emit('handlers_ready');

  // The service updates the desired properties through the Registry's Twin.
  const serviceTwin = (await step('registry.getTwin', () => registry.getTwin(deviceId))).responseBody;
  const desiredSeen = waitFor('desired', (cb) => { onDesired = cb; });
  const updated = (await step('twin.update', () => serviceTwin.update({ properties: { desired: { interval: 9 } } }))).result;
  emit('twin_updated', { interval: updated.properties.desired.interval, version: updated.properties.desired.$version });
  const patch = await desiredSeen;
  emit('desired', { patch });
  // `desired: null` removes every desired property; the device gets each one nulled.
  const clearedSeen = waitFor('desired cleared', (cb) => { onDesired = cb; });
  await step('twin.update null', () => serviceTwin.update({ properties: { desired: null } }));
  const cleared = await clearedSeen;
  emit('desired_cleared', { patch: cleared, desired: twin.properties.desired });

  // C2D over AMQP (azure-iothub's Client), completed by the device.
  const serviceClient = iothub.Client.fromConnectionString(serviceCs);
  await step('client.open', () => serviceClient.open());
  const c2d = new device.Message('hello node');
  c2d.messageId = 'node-c2d-1';
  c2d.correlationId = 'node-c2d-corr';
  c2d.properties.add('color', 'blue');
  c2d.properties.add('note', 'yes & no = maybe/ok');
  const c2dSeen = waitFor('c2d', (cb) => { onC2d = cb; });
  await step('client.send', () => serviceClient.send(deviceId, c2d));
  emit('c2d_sent');
  const received = await c2dSeen;
  emit('c2d', {
    data: received.data.toString('utf8'),
    messageId: received.messageId,
    correlationId: received.correlationId,
    properties: properties(received),
  });

  // A direct method through the service client (REST), answered by the device.
  const methodSeen = waitFor('method', (cb) => { onMethod = cb; });
  const invoked = await step('invokeDeviceMethod', () => serviceClient.invokeDeviceMethod(deviceId, {
    methodName: 'reboot',
    payload: { delay: 1 },
    responseTimeoutInSeconds: 15,
  }));
  const request = await methodSeen;
  emit('method', { name: request.methodName, payload: request.payload });
  emit('invoked', { status: invoked.result.status, payload: invoked.result.payload });

  await step('client.close', () => serviceClient.close());
  await step('device.close', () => client.close());

  // Delete, then the Registry reports the device as not found by its error class.
  await step('delete', () => registry.delete(deviceId));
  const err = await registry.get(deviceId).then(() => null, (e) => e);
  emit('deleted', { getError: err && err.name, status: err && err.response && err.response.statusCode });
  emit('done');
}

// The bulk registry calls as azure-iothub makes them (importMode create, Update, Delete).
async function bulk(registry, prefix) {
  const ids = [prefix + '-1', prefix + '-2'];
  const key = () => require('crypto').randomBytes(32).toString('base64');
  const outcome = (r) => ({ ok: r.responseBody.isSuccessful, errors: r.responseBody.errors.length });
  const added = await step('addDevices', () => registry.addDevices(ids.map((deviceId) => ({
    deviceId,
    status: 'disabled',
    authentication: { symmetricKey: { primaryKey: key(), secondaryKey: key() } },
  }))));
  const disabled = (await step('get bulk', () => registry.get(ids[0]))).responseBody.status;
  const updated = await step('updateDevices', () => registry.updateDevices(ids.map((deviceId) => ({ deviceId, status: 'enabled' })), true));
  const enabled = (await step('get bulk', () => registry.get(ids[1]))).responseBody.status;
  const removed = await step('removeDevices', () => registry.removeDevices(ids.map((deviceId) => ({ deviceId })), true));
  const err = await registry.get(ids[0]).then(() => null, (e) => e);
  emit('bulk', {
    added: outcome(added), disabled, updated: outcome(updated), enabled, removed: outcome(removed),
    getError: err && err.name,
  });
}

async function dps(idScope, host, registrationId, keyFile) {
  const { ProvisioningDeviceClient } = require('azure-iot-provisioning-device');
  const { Mqtt: DpsMqtt } = require('azure-iot-provisioning-device-mqtt');
  const { SymmetricKeySecurityClient } = require('azure-iot-security-symmetric-key');
  const key = fs.readFileSync(keyFile, 'utf8').trim();
  const security = new SymmetricKeySecurityClient(registrationId, key);
  const provisioning = ProvisioningDeviceClient.create(host, idScope, new DpsMqtt(), security);
  const result = await step('register', () => provisioning.register());
  emit('registered', { assignedHub: result.assignedHub, deviceId: result.deviceId, status: result.status });

  const cs = 'HostName=' + result.assignedHub + ';DeviceId=' + result.deviceId + ';SharedAccessKey=' + key;
  const client = device.Client.fromConnectionString(cs, Mqtt);
  await step('open', () => client.open());
  const msg = new device.Message(JSON.stringify({ provisioned: true }));
  msg.messageId = 'node-dps-1';
  await step('sendEvent', () => client.sendEvent(msg));
  emit('telemetry_sent', { messageId: msg.messageId });
  await step('close', () => client.close());
  emit('done');
}

// An X.509 self-signed (thumbprint) device over TRANSPORT: connect with its certificate and
// key, send one message.
async function x509(host, deviceId, certFile, keyFile, transportName) {
  const Transport = { mqtt: Mqtt, mqttws: MqttWs }[transportName];
  const client = device.Client.fromConnectionString('HostName=' + host + ';DeviceId=' + deviceId + ';x509=true', Transport);
  client.setOptions({ cert: fs.readFileSync(certFile, 'utf8'), key: fs.readFileSync(keyFile, 'utf8') });
  await step('open', () => client.open());
  emit('connected', { transport: Transport.name });
  const msg = new device.Message('x509 ' + transportName);
  msg.messageId = 'node-x509-' + transportName;
  await step('sendEvent', () => client.sendEvent(msg));
  emit('telemetry_sent', { messageId: msg.messageId });
  await step('close', () => client.close());
  emit('done');
}

const [mode, ...args] = process.argv.slice(2);
const run = { service, dps, x509 }[mode];
if (!run) {
  fail('args', new Error('mode is service, dps or x509'));
}
run(...args).then(() => process.exit(0), (err) => fail('unexpected', err));
