from bankgate.cli import main

main()
