"""The click command line: parse, call one core function, render. Nothing else imports click."""
