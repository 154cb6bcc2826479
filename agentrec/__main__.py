from agentrec.cli import main

main()
