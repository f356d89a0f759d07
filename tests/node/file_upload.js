// File upload with the official Node.js SDKs against an azsim hub: azure-iot-device's
// uploadToBlob (SAS URI from the hub, then @azure/storage-blob's uploadStream: Put Block +
// Put Block List on the hub's blob endpoint, then the completion notice) and azure-iothub's
// getFileNotificationReceiver (AMQP /messages/serviceBound/filenotifications), which completes
// the notification it receives.
//
// Run by tests/it/hub_file_upload.rs; talks to it through JSON lines on stdout (one object per
// line, key "event") and never prints a key, a token or a SAS.
//
//   node file_upload.js SERVICE_CS_FILE DEVICE_CS_FILE BLOB_NAME SIZE
//
// The SDKs dial only Azure's ports (REST 443, AMQPS 5671), which the hub under test has.
'use strict';

const fs = require('fs');
const { Readable } = require('stream');
const crypto = require('crypto');
const device = require('azure-iot-device');
const { Mqtt } = require('azure-iot-device-mqtt');
const iothub = require('azure-iothub');

const TIMEOUT_MS = 60000;

function emit(event, fields) {
  process.stdout.write(JSON.stringify(Object.assign({ event }, fields || {})) + '\n');
}

function fail(step, err) {
  const inner = err && err.innerError;
  emit('error', {
    step,
    name: err && err.name,
    message: String((err && err.message) || err),
    inner: inner ? String(inner.message || inner) : undefined,
  });
  process.exit(1);
}

async function main() {
  const [serviceCsFile, deviceCsFile, blobName, sizeText] = process.argv.slice(2);
  const serviceCs = fs.readFileSync(serviceCsFile, 'utf8').trim();
  const deviceCs = fs.readFileSync(deviceCsFile, 'utf8').trim();
  const size = Number(sizeText);
  // Varied bytes, so a block out of order or a byte dropped shows in the digest.
  const data = Buffer.alloc(size);
  for (let i = 0; i < size; i++) data[i] = (i * 13 + (i >> 8)) % 251;

  const service = iothub.Client.fromConnectionString(serviceCs);
  try {
    await service.open();
  } catch (e) {
    fail('service_open', e);
  }
  let receiver;
  try {
    receiver = (await service.getFileNotificationReceiver()).result;
  } catch (e) {
    fail('file_notification_receiver', e);
  }
  const notified = new Promise((resolve) => {
    receiver.on('message', (msg) => {
      const body = JSON.parse(msg.data.toString());
      receiver.complete(msg, (err) => {
        if (err) fail('complete', err);
        resolve(body);
      });
    });
  });
  receiver.on('error', (e) => fail('receiver', e));
  emit('receiver_attached');

  const client = device.Client.fromConnectionString(deviceCs, Mqtt);
  try {
    await client.uploadToBlob(blobName, Readable.from([data]), size);
  } catch (e) {
    fail('upload_to_blob', e);
  }
  emit('uploaded', { size, sha256: crypto.createHash('sha256').update(data).digest('hex') });

  const timer = setTimeout(() => fail('notification', new Error('no file notification')), TIMEOUT_MS);
  const body = await notified;
  clearTimeout(timer);
  emit('notification', { body });

  await client.close().catch(() => {});
  await service.close().catch(() => {});
  emit('done');
  process.exit(0);
}

main().catch((e) => fail('main', e));
