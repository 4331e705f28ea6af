// A real OpenID Connect provider for lessor's people sign-in tests:
// oidc-provider (a certified library) on a loopback port, with one client
// for lessor, PKCE required, the device flow on, and test users.
//
//   node provider.mjs --port 0 --redirect-uri http://127.0.0.1:PORT/v1/people/callback \
//        --secret-file /path/secret [--ttl 300]
//
// Prints `oidc-provider listening on http://127.0.0.1:<port>` when ready.
// Interactions are answered by a minimal handler of its own (no HTML
// forms to scrape): POST /interaction/<uid>/login with `login=<user>` signs
// that user in and grants what the client asked for, in one step;
// `login=nobody` or an unknown user is refused.

import http from 'node:http';
import fs from 'node:fs';
import Provider from 'oidc-provider';

function arg(name, dflt) {
  const i = process.argv.indexOf(`--${name}`);
  if (i !== -1 && i + 1 < process.argv.length) return process.argv[i + 1];
  return dflt;
}

const port = Number(arg('port', '0'));
const redirectUri = arg('redirect-uri');
const secret = fs.readFileSync(arg('secret-file'), 'utf8').trim();
const ttl = Number(arg('ttl', '300'));
if (!redirectUri) {
  console.error('provider.mjs: --redirect-uri is required');
  process.exit(2);
}

const USERS = {
  alice: { name: 'Alice Platform', groups: ['platform'] },
  bob: { name: 'Bob Finance', groups: ['finance'] },
  carol: { name: 'Carol Acme', groups: ['account:acme'] },
  dave: { name: 'Dave Globex', groups: ['account:globex'] },
  // Another subject with alice's email (in finance): one person with two
  // accounts must still not approve their own change.
  'a.smith': { name: 'A. Smith', groups: ['finance'], email: 'alice@example.com' },
};

// Listen first: the issuer URL names the port.
const server = http.createServer();
await new Promise((resolve) => server.listen(port, '127.0.0.1', resolve));
const issuer = `http://127.0.0.1:${server.address().port}`;

const provider = new Provider(issuer, {
  clients: [{
    client_id: 'lessor',
    client_secret: secret,
    redirect_uris: [redirectUri],
    grant_types: ['authorization_code', 'urn:ietf:params:oauth:grant-type:device_code'],
    response_types: ['code'],
    token_endpoint_auth_method: 'client_secret_basic',
  }],
  pkce: { required: () => true },
  features: {
    devInteractions: { enabled: false },
    deviceFlow: {
      enabled: true,
      userCodeInputSource: async (ctx, form) => { ctx.body = `<html><body>${form}</body></html>`; },
      userCodeConfirmSource: async (ctx, form) => { ctx.body = `<html><body>${form}</body></html>`; },
      successSource: async (ctx) => { ctx.body = '<html><body>device approved</body></html>'; },
    },
  },
  scopes: ['openid', 'email', 'profile', 'groups'],
  claims: {
    openid: ['sub'],
    email: ['email', 'email_verified'],
    profile: ['name'],
    groups: ['groups'],
  },
  findAccount: async (ctx, id) => {
    const u = USERS[id];
    if (!u) return undefined;
    return {
      accountId: id,
      claims: async () => ({ sub: id, email: u.email || `${id}@Example.com`, email_verified: true, name: u.name, groups: u.groups }),
    };
  },
  interactions: { url: (ctx, interaction) => `/interaction/${interaction.uid}` },
  cookies: { keys: ['lessor-test-cookie-key'] },
  ttl: {
    AccessToken: ttl, AuthorizationCode: Math.min(ttl, 60), IdToken: ttl, DeviceCode: ttl,
    Interaction: ttl, Session: ttl, Grant: ttl,
  },
});
provider.proxy = false;

async function readForm(req) {
  let body = '';
  for await (const chunk of req) {
    body += chunk;
    if (body.length > 8192) throw new Error('form too large');
  }
  return new URLSearchParams(body);
}

const callback = provider.callback();
server.on('request', async (req, res) => {
  const m = req.url.match(/^\/interaction\/([^/?]+)(\/login)?/);
  if (!m) return callback(req, res);
  try {
    const details = await provider.interactionDetails(req, res);
    if (!m[2] || req.method !== 'POST') {
      res.setHeader('content-type', 'application/json');
      res.end(JSON.stringify({ uid: details.uid, prompt: details.prompt.name, login: `/interaction/${details.uid}/login` }));
      return;
    }
    const form = await readForm(req);
    const login = form.get('login');
    if (!USERS[login]) {
      await provider.interactionFinished(req, res, { error: 'access_denied', error_description: 'unknown user' });
      return;
    }
    const { params } = details;
    const grant = new provider.Grant({ accountId: login, clientId: params.client_id });
    grant.addOIDCScope(String(params.scope || 'openid'));
    const grantId = await grant.save();
    await provider.interactionFinished(req, res, { login: { accountId: login }, consent: { grantId } }, { mergeWithLastSubmission: false });
  } catch (e) {
    res.statusCode = 400;
    res.end(`interaction failed: ${e.message}`);
  }
});

console.log(`oidc-provider listening on ${issuer}`);
