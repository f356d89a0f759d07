// Drives azure-iot-device over HTTPS (azure-iot-device-http, the Node SDK's `Http` transport)
// against an azsim hub: telemetry single and batched with properties, a message at the size
// limit and one past it, 20 sequential sends timed, refused sends (a wrong key, an unknown device, an expired token), C2D
// received by polling and completed, rejected or abandoned (the service's feedback read back
// over AMQP), and an X.509 device sending with its client certificate only.
//
// Run by tests/it/sdk_e2e_node_http.rs; talks to it through JSON lines on stdout (one object
// per line, key "event") and never prints a key, a token or a connection string. The Rust side
// reads what the hub stored from its event log.
//
//   node device_http.js SERVICE_CS_FILE DEVICE_ID [X509_DEVICE_ID CERT_FILE KEY_FILE]
'use strict';

const fs = require('fs');
const device = require('azure-iot-device');
const { Http } = require('azure-iot-device-http');
const common = require('azure-iot-common');
const iothub = require('azure-iothub');

const STEP_TIMEOUT_MS = 30000;
const TIMED_SENDS = 20;

function emit(event, fields) {
  process.stdout.write(JSON.stringify(Object.assign({ event }, fields || {})) + '\n');
}

function fail(step, err) {
  emit('error', { step, name: err && err.name, message: String((err && err.message) || err) });
  process.exit(1);
}

async function step(name, fn) {
  const timer = setTimeout(() => {
    emit('timeout', { step: name });
    process.exit(1);
  }, STEP_TIMEOUT_MS);
  try {
    return await fn();
  } catch (err) {
    fail(name, err);
  } finally {
    clearTimeout(timer);
  }
}

// The error a send that must fail ends with, as the suite's authentication.js looks at it.
async function refused(name, client, message) {
  const err = await step(name, async () => {
    try {
      await client.sendEvent(message);
    } catch (e) {
      return e;
    }
    throw new Error('the send was accepted');
  });
  let body = null;
  try {
    body = JSON.parse(err.responseBody);
  } catch (_) {
    body = err.responseBody === undefined ? null : String(err.responseBody);
  }
  emit('refused', {
    case: name,
    name: err.constructor && err.constructor.name,
    unauthorized: err instanceof common.errors.UnauthorizedError,
    tooLarge: err instanceof common.errors.MessageTooLargeError,
    status: err.response && err.response.statusCode,
    errorCode: err.response && err.response.headers['iothub-errorcode'],
    body,
  });
}

function appProperties(msg) {
  const out = {};
  for (let i = 0; i < msg.properties.count(); i++) {
    const p = msg.properties.getItem(i);
    out[p.key] = p.value;
  }
  return out;
}

async function telemetry(client) {
  const single = new device.Message(JSON.stringify({ temperature: 21.5 }));
  single.messageId = 'http-single-1';
  single.correlationId = 'http-corr-1';
  single.contentType = 'application/json';
  single.contentEncoding = 'utf-8';
  single.properties.add('alert', 'hot');
  single.properties.add('unit', 'celsius');
  const r = await step('sendEvent', () => client.sendEvent(single));
  emit('sent', { status: r.transportObj && r.transportObj.statusCode });

  const batch = [1, 2, 3].map((n) => {
    const m = new device.Message('batch-' + n);
    m.properties.add('n', String(n));
    return m;
  });
  const b = await step('sendEventBatch', () => client.sendEventBatch(batch));
  emit('batchSent', { status: b.transportObj && b.transportObj.statusCode });

  // At the limit: 256 KiB less the property's name and value (the hub counts the bag).
  const atLimit = new device.Message(Buffer.alloc(256 * 1024 - 64, 'a'));
  atLimit.properties.add('size', 'limit');
  const l = await step('sendEvent at the limit', () => client.sendEvent(atLimit));
  emit('limitSent', { status: l.transportObj && l.transportObj.statusCode });
  await refused('too large', client, new device.Message(Buffer.alloc(256 * 1024 + 1, 'b')));

  // Sequential round trips, each answered once the hub has committed it (timed, not judged).
  const start = process.hrtime.bigint();
  for (let i = 0; i < TIMED_SENDS; i++) {
    await step('timed sendEvent', () => client.sendEvent(new device.Message('timed-' + i)));
  }
  const ms = Number(process.hrtime.bigint() - start) / 1e6;
  emit('timed', { count: TIMED_SENDS, ms });
}

async function c2d(serviceCs, client, deviceId) {
  const service = iothub.Client.fromConnectionString(serviceCs);
  await step('service open', () => service.open());
  const receiver = await step('feedback receiver', () => new Promise((resolve, reject) => {
    service.getFeedbackReceiver((err, r) => (err ? reject(err) : resolve(r)));
  }));
  const statuses = {};
  const allFeedback = new Promise((resolve) => {
    receiver.on('message', (msg) => {
      for (const rec of JSON.parse(msg.data.toString())) {
        statuses[rec.originalMessageId] = rec.statusCode;
      }
      receiver.complete(msg, () => {});
      if (['c2d-complete', 'c2d-reject', 'c2d-abandon'].every((id) => statuses[id])) resolve();
    });
  });

  const settled = {};
  const allSettled = new Promise((resolve) => {
    let abandoned = false;
    client.on('message', (msg) => {
      const id = msg.messageId;
      let action = { 'c2d-complete': 'complete', 'c2d-reject': 'reject' }[id] || 'complete';
      if (id === 'c2d-abandon' && !abandoned) {
        abandoned = true;
        action = 'abandon';
      }
      emit('c2d', {
        messageId: id,
        correlationId: msg.correlationId,
        data: msg.data.toString(),
        properties: appProperties(msg),
        lockToken: typeof msg.lockToken === 'string' && msg.lockToken.length > 0,
        action,
      });
      client[action](msg, (err) => {
        if (err) fail(action + ' ' + id, err);
        emit('settled', { messageId: id, action });
        if (action !== 'abandon') settled[id] = action;
        if (Object.keys(settled).length === 3) resolve();
      });
    });
  });
  client.on('error', (err) => fail('c2d receiver', err));

  for (const id of ['c2d-complete', 'c2d-reject', 'c2d-abandon']) {
    const m = new device.Message('body of ' + id);
    m.messageId = id;
    m.correlationId = 'corr-' + id;
    m.ack = 'full';
    m.properties.add('kind', id.slice(4));
    await step('send ' + id, () => service.send(deviceId, m));
  }
  await step('c2d settled', () => allSettled);
  await step('feedback', () => allFeedback);
  emit('feedback', { statuses });
  await step('service close', () => service.close());
}

async function x509(host, deviceId, certFile, keyFile) {
  const cs = 'HostName=' + host + ';DeviceId=' + deviceId + ';x509=true';
  const client = device.Client.fromConnectionString(cs, Http);
  client.setOptions({ cert: fs.readFileSync(certFile, 'utf8'), key: fs.readFileSync(keyFile, 'utf8') });
  const m = new device.Message('from x509');
  m.messageId = 'http-x509-1';
  const r = await step('x509 sendEvent', () => client.sendEvent(m));
  emit('x509Sent', { status: r.transportObj && r.transportObj.statusCode });
  await step('x509 close', () => client.close());
}

async function main(csFile, deviceId, x509Args) {
  const serviceCs = fs.readFileSync(csFile, 'utf8').trim();
  const host = iothub.ConnectionString.parse(serviceCs).HostName;
  const registry = iothub.Registry.fromConnectionString(serviceCs);
  const created = (await step('create', () => registry.create({ deviceId }))).responseBody;
  const key = created.authentication.symmetricKey.primaryKey;
  const deviceCs = 'HostName=' + host + ';DeviceId=' + deviceId + ';SharedAccessKey=' + key;

  const client = device.Client.fromConnectionString(deviceCs, Http);
  await step('open', () => client.open());
  emit('opened');
  await telemetry(client);

  // Refused: another key, a device the hub does not know, a token past its expiry.
  const otherKey = Buffer.from('not the device key, 32 bytes....').toString('base64');
  const wrong = device.Client.fromConnectionString(
    'HostName=' + host + ';DeviceId=' + deviceId + ';SharedAccessKey=' + otherKey, Http);
  await refused('wrong key', wrong, new device.Message('x'));
  const unknown = device.Client.fromConnectionString(
    'HostName=' + host + ';DeviceId=no-such-' + deviceId + ';SharedAccessKey=' + key, Http);
  await refused('unknown device', unknown, new device.Message('x'));
  const past = Math.floor(Date.now() / 1000) - 60;
  const expired = device.Client.fromSharedAccessSignature(
    common.SharedAccessSignature.create(host + '/devices/' + deviceId, null, key, past).toString(),
    Http);
  await refused('expired token', expired, new device.Message('x'));

  await c2d(serviceCs, client, deviceId);
  await step('close', () => client.close());

  if (x509Args.length === 3) await x509(host, ...x509Args);
  emit('done');
  process.exit(0);
}

const [csFile, deviceId, ...rest] = process.argv.slice(2);
if (!csFile || !deviceId) fail('args', new Error('usage: device_http.js SERVICE_CS_FILE DEVICE_ID [X509_ID CERT KEY]'));
main(csFile, deviceId, rest).catch((err) => fail('main', err));
