"""solar-jax chat MODEL [--system TEXT] [sampling flags]: an interactive chat that streams
the answers; /reset forgets the conversation, /help lists the commands, /exit (or Ctrl-D)
quits. A line starting with "/" is a command, never sent to the model ("//text" sends
"/text")."""

from __future__ import annotations

import sys

from solar_jax.commands.generate import add_model_args, add_sampling_args, load, sampling
from solar_jax.errors import SolarError


HELP = "commands: /reset (start over), /help, /exit or /quit (or Ctrl-D); //text sends /text"


def register(sub) -> None:
    p = sub.add_parser("chat", help="chat with a model in the terminal (its chat template)")
    add_model_args(p)
    p.add_argument("--system", default=None, help="system message")
    add_sampling_args(p)
    p.set_defaults(func=run)


def run(args) -> None:
    from solar_jax.generate import Sampler
    from solar_jax.generate.chat import ChatSession

    Sampler(args.temperature, args.top_k, args.top_p)
    options = sampling(args)
    model, tokenizer = load(args)
    session = ChatSession(model, tokenizer, system=args.system,
                          max_new_tokens=args.max_new_tokens, **options)
    interactive = sys.stdin.isatty()
    if interactive:
        print(f"{model} — /reset to start over, /help for commands, /exit to quit",
              file=sys.stderr)
    while True:
        try:
            text = input("you> " if interactive else "")
        except EOFError:
            break
        text = text.strip()
        if not text:
            continue
        if text.startswith("/") and not text.startswith("//"):
            command = text.split()[0]
            if command in ("/exit", "/quit"):
                break
            if command == "/reset":
                session.reset()
                print("(conversation reset" + (", system message kept)" if args.system
                                               else ")"), file=sys.stderr)
            elif command == "/help":
                print(HELP, file=sys.stderr)
            else:
                print(f"unknown command {command}; {HELP}", file=sys.stderr)
            continue
        text = text[1:] if text.startswith("//") else text
        sys.stdout.write("assistant> " if interactive else "")
        try:
            session.ask(text, on_text=lambda d: (sys.stdout.write(d), sys.stdout.flush()))
        except SolarError as e:  # one bad turn (too long) should not end the chat
            print(f"\nerror: {e}", file=sys.stderr)
        print()
