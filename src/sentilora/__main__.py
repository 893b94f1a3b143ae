from sentilora.cli import main

main()
