// Package redact hides the secrets in connection strings, so that a string
// can be logged or put in an error message as it was given, less what must
// not be shown; and it keeps known secrets out of every log record and
// message (Secrets, Replacer, Handler, URLsIn), whoever wrote it: a
// library's error that quotes a connection string is masked too.
//
// URL takes the forms sightline is given:
//
//   - URLs of any scheme (postgres://, postgresql://, esdb://,
//     kurrentdb+discover://, https://, …): the password of the user info
//     (user:password@) is replaced by Mask, and so is the value of every
//     query parameter whose name says it holds a secret;
//   - PostgreSQL key=value connection strings (host=db password=secret or
//     password='a quoted secret'), and the semicolon-separated
//     Key=Value;Key=Value form: the value of every key whose name says it
//     holds a secret.
//
// A name says it holds a secret when, in any case and with '_', '-' and '.'
// left out, it contains pass (password, passwd, sslpassword, passphrase,
// passfile), pwd, token, secret, credential or signature, ends with key
// (apikey, api_key, access_key, sslkey), or is sig.
//
// Empty secrets are left as they are: that a password is empty says nothing
// of it, and may be what is wrong. Everything else is kept byte for byte:
// the user name, hosts, ports, path, the other parameters and their order.
//
// When a string can be read more than one way, the reading that hides more
// wins. In a URL, an @ after a /, ? or # is taken to end the user info, as
// if the password had a /, ? or # that was not percent-encoded: in
// esdb://h:2113?x=a@b, "2113?x=a" is hidden. In a key=value string, a
// secret's unquoted value runs to the next white space, semicolons
// included.
package redact
