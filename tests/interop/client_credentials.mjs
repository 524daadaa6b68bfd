// A strict RFC 6749 client against bankgate: openid-client v6 discovers the server through RFC 8414 metadata
// (/.well-known/oauth-authorization-server), asks POST /oauth/token for a client_credentials token with
// client_secret_basic, and prints the token response as JSON. openid-client accepts only 200 from the token
// endpoint (RFC 6749 §5.1), so against a server answering 201 it fails: that is what the test checks both ways.
//
// Usage: BANKGATE_ISSUER=http://127.0.0.1:8000 BANKGATE_API_KEY=bk_test_… BANKGATE_SECRET_KEY=sk_test_… \
//        [BANKGATE_SCOPE=app_12345] node client_credentials.mjs
// (credentials from the environment, never the command line, which other local users can read)
import * as client from 'openid-client'

const need = (name) => {
  const value = process.env[name]
  if (!value) {
    console.error(`set ${name}`)
    process.exit(2)
  }
  return value
}

const issuer = new URL(need('BANKGATE_ISSUER'))
const options = issuer.protocol === 'http:' ? { algorithm: 'oauth2', execute: [client.allowInsecureRequests] }
  : { algorithm: 'oauth2' }

try {
  const config = await client.discovery(issuer, need('BANKGATE_API_KEY'), undefined,
    client.ClientSecretBasic(need('BANKGATE_SECRET_KEY')), options)
  const parameters = process.env.BANKGATE_SCOPE ? { scope: process.env.BANKGATE_SCOPE } : {}
  const tokens = await client.clientCredentialsGrant(config, parameters)
  console.log(JSON.stringify({
    access_token: tokens.access_token,
    token_type: tokens.token_type,
    expires_in: tokens.expires_in,
    scope: tokens.scope,
  }))
} catch (error) {
  const status = error.cause instanceof Response ? `; HTTP status ${error.cause.status}` : ''
  console.error(`${error.name}: ${error.message}${error.code ? ` (${error.code})` : ''}${status}`)
  process.exit(1)
}
